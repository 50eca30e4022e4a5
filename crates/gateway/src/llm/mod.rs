//! The LLM adapter: routes of `kind = "llm"` speak the OpenAI-compatible API
//! (`/v1/chat/completions`, streamed or not, `/v1/embeddings`, `/v1/models`),
//! so policy, budgets and the content guard act on the model and the
//! messages, not on opaque bytes. The pipeline's stages for these routes are
//! in `pipeline/llm.rs`; this module holds what they use:
//!
//! - `config.rs`: `[[routes.models]]`, `api_key_env`/`api_key_file`, `[routes.budget]`;
//! - `api.rs`: endpoints, the request's model and stream flags, the texts
//!   the guard scans and their channels;
//! - `budget.rs`: per-agent request and token counters (lock-free windows);
//! - `stream.rs`: the answer's usage and DLP, event by event for streams.
//!
//! [`LlmRoutes`] holds each route's upstream API key (read from its
//! environment variable or file, then held only in memory, zeroized when
//! dropped). It is part of the reloadable [`crate::routing::Routing`]: built
//! at start and again by each config reload, so a reload re-reads the keys.
//! The budget counters ([`budget::Budgets`]) live on the gateway, so a reload
//! never resets them.

pub mod api;
pub mod budget;
pub mod config;
pub mod stream;

use std::collections::HashMap;
use std::sync::Arc;

use portcullis_policy::ModelEntity;
use portcullis_vault::Plain;

use crate::config::{Config, Injection};
use crate::pipeline::inject::Injected;
use config::ApiKeySource;

/// A route's upstream API key could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ApiKeyError {
    /// The environment variable is not set or empty.
    #[error("route `{route}`: environment variable `{var}` (api_key_env) is not set or empty")]
    Env {
        /// The route.
        route: String,
        /// The variable.
        var: String,
    },
    /// The file cannot be read or is empty.
    #[error("route `{route}`: cannot read api_key_file `{path}`: {problem}")]
    File {
        /// The route.
        route: String,
        /// The file.
        path: String,
        /// What went wrong (never the content).
        problem: String,
    },
    /// The key cannot go in an HTTP header.
    #[error(
        "route `{route}`: the upstream API key contains characters an HTTP header cannot carry"
    )]
    Invalid {
        /// The route.
        route: String,
    },
}

/// What the LLM stages need at run time, for every `kind = "llm"` route.
#[derive(Debug, Default)]
pub struct LlmRoutes {
    /// Each route's upstream key, ready to inject as `Authorization: Bearer`.
    keys: HashMap<String, Arc<Injected>>,
}

impl LlmRoutes {
    /// Reads every LLM route's API key. `serve` calls this before binding
    /// any port, so a missing key fails the start, not the first request.
    pub fn load(config: &Config) -> Result<Self, ApiKeyError> {
        let mut keys = HashMap::new();
        for route in &config.routes {
            let Some(llm) = &route.llm else { continue };
            let Some(source) = &llm.api_key else { continue };
            let value = read_key(&route.name, source)?;
            // The header value is built per request from this; check it once.
            let mut header = b"Bearer ".to_vec();
            header.extend_from_slice(&value);
            if http::HeaderValue::from_bytes(&header).is_err() {
                return Err(ApiKeyError::Invalid {
                    route: route.name.clone(),
                });
            }
            zeroize::Zeroize::zeroize(&mut header);
            keys.insert(
                route.name.clone(),
                Arc::new(Injected {
                    secret: match source {
                        ApiKeySource::Env(var) => format!("api_key_env:{var}"),
                        ApiKeySource::File(_) => "api_key_file".into(),
                    },
                    injection: Injection::Header {
                        name: http::header::AUTHORIZATION,
                        prefix: "Bearer ".into(),
                        suffix: String::new(),
                    },
                    value: Arc::new(Plain { version: 0, value }),
                }),
            );
        }
        Ok(LlmRoutes { keys })
    }

    /// The route's upstream key, if it has one.
    pub fn key(&self, route: &str) -> Option<&Injected> {
        self.keys.get(route).map(|k| &**k)
    }
}

fn read_key(
    route: &str,
    source: &ApiKeySource,
) -> Result<zeroize::Zeroizing<Vec<u8>>, ApiKeyError> {
    let raw = match source {
        ApiKeySource::Env(var) => std::env::var_os(var)
            .map(|v| zeroize::Zeroizing::new(v.into_encoded_bytes()))
            .ok_or_else(|| ApiKeyError::Env {
                route: route.to_string(),
                var: var.clone(),
            })?,
        ApiKeySource::File(path) => {
            zeroize::Zeroizing::new(std::fs::read(path).map_err(|e| ApiKeyError::File {
                route: route.to_string(),
                path: path.display().to_string(),
                problem: e.kind().to_string(),
            })?)
        }
    };
    let trimmed = raw.trim_ascii();
    if trimmed.is_empty() {
        return Err(match source {
            ApiKeySource::Env(var) => ApiKeyError::Env {
                route: route.to_string(),
                var: var.clone(),
            },
            ApiKeySource::File(path) => ApiKeyError::File {
                route: route.to_string(),
                path: path.display().to_string(),
                problem: "the file is empty".into(),
            },
        });
    }
    Ok(zeroize::Zeroizing::new(trimmed.to_vec()))
}

/// The registry entry each model that names one names, by model entity id.
pub fn model_registry_refs(config: &Config) -> HashMap<String, (String, String)> {
    config
        .routes
        .iter()
        .filter_map(|r| r.llm.as_ref().map(|l| (r, l)))
        .flat_map(|(route, llm)| {
            llm.models.iter().filter_map(|m| {
                m.registry
                    .clone()
                    .map(|r| (ModelEntity::id(&route.name, &m.name), r))
            })
        })
        .collect()
}

/// The model entities of every LLM route, for the policy snapshot.
pub fn model_entities(config: &Config) -> Vec<ModelEntity> {
    config
        .routes
        .iter()
        .filter_map(|r| r.llm.as_ref().map(|l| (r, l)))
        .flat_map(|(route, llm)| {
            llm.models.iter().map(|m| ModelEntity {
                route: route.name.clone(),
                name: m.name.clone(),
                version: m.version.clone(),
                status: m.status.clone(),
                classification: m.classification,
                registry: Default::default(),
            })
        })
        .collect()
}
