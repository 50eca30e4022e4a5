//! The configuration of a `kind = "llm"` route: its models (`[[routes.models]]`),
//! where the upstream API key comes from (`api_key_env` / `api_key_file`), and
//! the per-agent budget (`[routes.budget]`).

use std::path::PathBuf;

use portcullis_core::Classification;
use serde::Deserialize;

/// `[[routes.models]]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    /// The model name clients send (`gpt-4o-mini`).
    pub name: String,
    /// Free-text version, `resource.version` in policy.
    #[serde(default)]
    pub version: String,
    /// Free-text status (`approved`, `preview`, …), `resource.status` in policy.
    #[serde(default)]
    pub status: String,
    /// Defaults to the route's classification.
    #[serde(default)]
    pub classification: Option<String>,
    /// A model-registry entry, `NAME@VERSION`: policy then sees its
    /// `verified`, `lifecycle` and `digest` (docs/governance.md).
    #[serde(default)]
    pub registry: Option<String>,
}

/// `[routes.budget]`: per agent, on this route. Every limit is optional;
/// an absent one does not limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// Requests per UTC minute.
    pub requests_per_minute: Option<u64>,
    /// Requests per UTC day.
    pub requests_per_day: Option<u64>,
    /// Tokens (prompt + completion, from the upstream's `usage`) per UTC minute.
    pub tokens_per_minute: Option<u64>,
    /// Tokens per UTC day.
    pub tokens_per_day: Option<u64>,
}

impl BudgetConfig {
    /// Whether any limit is set.
    pub fn is_limited(&self) -> bool {
        self.requests_per_minute.is_some()
            || self.requests_per_day.is_some()
            || self.tokens_per_minute.is_some()
            || self.tokens_per_day.is_some()
    }
}

/// A validated model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelConfig {
    /// The name clients send.
    pub name: String,
    /// Free-text version.
    pub version: String,
    /// Free-text status.
    pub status: String,
    /// Sensitivity of the data the model may see.
    pub classification: Classification,
    /// The model-registry entry it names, `(name, version)`.
    pub registry: Option<(String, String)>,
}

/// Where the upstream API key comes from. Read once at start; the value is
/// never logged, put in an error or forwarded anywhere but the upstream's
/// `Authorization: Bearer` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiKeySource {
    /// An environment variable of the `serve` process.
    Env(String),
    /// A file (trailing whitespace is trimmed).
    File(PathBuf),
}

/// The LLM part of a validated route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlmConfig {
    /// The models the route serves, in file order.
    pub models: Vec<ModelConfig>,
    /// The upstream API key, when the upstream needs one (a vault
    /// `credential` may be used instead).
    pub api_key: Option<ApiKeySource>,
    /// Per-agent limits.
    pub budget: BudgetConfig,
}

impl LlmConfig {
    /// The model named `name`.
    pub fn model(&self, name: &str) -> Option<&ModelConfig> {
        self.models.iter().find(|m| m.name == name)
    }
}

/// Whether `name` can be a model name: 1-128 characters of letters, digits,
/// `.`, `_`, `-`, `:`, `/` (`meta-llama/Llama-3-8B`, `llama3:8b`).
pub fn is_valid_model_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'/'))
}

/// Validates the LLM keys of one route (`route_classification` is the
/// default of its models). `base` resolves a relative `api_key_file`.
pub fn validate(
    models: Vec<RawModel>,
    api_key_env: Option<String>,
    api_key_file: Option<PathBuf>,
    budget: Option<BudgetConfig>,
    route_classification: Classification,
    base: &std::path::Path,
) -> Result<LlmConfig, String> {
    if models.is_empty() {
        return Err("a route of kind `llm` needs at least one `[[routes.models]]`".into());
    }
    let mut out: Vec<ModelConfig> = Vec::with_capacity(models.len());
    for m in models {
        if !is_valid_model_name(&m.name) {
            return Err(format!(
                "invalid model name `{}`: use 1-128 characters of A-Z, a-z, 0-9, `.`, `_`, `-`, `:` or `/`",
                m.name
            ));
        }
        if out.iter().any(|o| o.name == m.name) {
            return Err(format!("model `{}` is listed twice", m.name));
        }
        let classification = match m.classification {
            Some(c) => c.parse().map_err(|e| format!("model `{}`: {e}", m.name))?,
            None => route_classification,
        };
        let registry = match m.registry {
            None => None,
            Some(r) => match r.split_once('@') {
                Some((name, version)) if !name.is_empty() && !version.is_empty() => {
                    Some((name.to_string(), version.to_string()))
                }
                _ => {
                    return Err(format!(
                        "model `{}`: `registry` must be `NAME@VERSION`, not `{r}`",
                        m.name
                    ));
                }
            },
        };
        out.push(ModelConfig {
            name: m.name,
            version: m.version,
            status: m.status,
            classification,
            registry,
        });
    }
    let api_key = match (api_key_env, api_key_file) {
        (Some(_), Some(_)) => {
            return Err("give at most one of `api_key_env` and `api_key_file`".into());
        }
        (Some(var), None) if var.is_empty() || var.contains('=') || var.contains('\0') => {
            return Err(format!("invalid environment variable name `{var}`"));
        }
        (Some(var), None) => Some(ApiKeySource::Env(var)),
        (None, Some(path)) if path.is_absolute() => Some(ApiKeySource::File(path)),
        (None, Some(path)) => Some(ApiKeySource::File(base.join(path))),
        (None, None) => None,
    };
    let budget = budget.unwrap_or_default();
    for (key, value) in [
        ("requests_per_minute", budget.requests_per_minute),
        ("requests_per_day", budget.requests_per_day),
        ("tokens_per_minute", budget.tokens_per_minute),
        ("tokens_per_day", budget.tokens_per_day),
    ] {
        if value == Some(0) {
            return Err(format!(
                "`budget.{key}` must be greater than 0 (leave it out for no limit)"
            ));
        }
    }
    Ok(LlmConfig {
        models: out,
        api_key,
        budget,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, RouteKind};

    const ROUTE: &str = "[[routes]]\nname = \"llm\"\nkind = \"llm\"\npath_prefix = \"/llm\"\nupstream = \"http://127.0.0.1:9\"\nclassification = \"internal\"\n";

    /// Parses `text`; "ok" or the error message's tail after the file name.
    fn check(text: &str, expect: &str) {
        let got = match Config::parse(text, std::path::Path::new("/etc/p/portcullis.toml")) {
            Ok(_) => "ok".to_string(),
            Err(e) => e.to_string(),
        };
        assert!(got.contains(expect), "{text}\n=> {got}");
    }

    #[test]
    fn llm_routes_validate() {
        let model = "[[routes.models]]\nname = \"gpt-4o-mini\"\n";
        check(&format!("{ROUTE}{model}"), "ok");
        check(
            ROUTE,
            "route `llm`: a route of kind `llm` needs at least one",
        );
        check(
            &format!("{ROUTE}api_key_env = \"K\"\napi_key_file = \"k\"\n{model}"),
            "at most one of `api_key_env` and `api_key_file`",
        );
        check(
            &format!("{ROUTE}{model}[[routes.models]]\nname = \"gpt-4o-mini\"\n"),
            "model `gpt-4o-mini` is listed twice",
        );
        check(
            &format!("{ROUTE}[[routes.models]]\nname = \"a b\"\n"),
            "invalid model name `a b`",
        );
        check(
            &format!("{ROUTE}{model}[routes.budget]\nrequests_per_minute = 0\n"),
            "`budget.requests_per_minute` must be greater than 0",
        );
        check(
            &format!("{ROUTE}{model}[routes.budget]\nrequest_per_minute = 5\n"),
            "unknown field `request_per_minute`",
        );
        check(
            &ROUTE.replace("http://127.0.0.1:9", "builtin:demo"),
            "needs an OpenAI-compatible upstream URL",
        );
        check(
            &format!(
                "{}{model}",
                ROUTE.replace("kind = \"llm\"", "kind = \"http\"")
            ),
            "belong to routes of kind `llm`",
        );
        check(
            &format!(
                "{}{model}",
                ROUTE.replace("kind = \"llm\"", "kind = \"mcp\"")
            ),
            "belong to routes of kind `llm`",
        );
    }

    #[test]
    fn models_inherit_the_route_classification_and_key_files_resolve() {
        let text = format!(
            "{ROUTE}api_key_file = \"keys/llm.key\"\n[[routes.models]]\nname = \"a\"\nstatus = \"approved\"\n[[routes.models]]\nname = \"b\"\nclassification = \"restricted\"\n"
        );
        let config = Config::parse(&text, std::path::Path::new("/etc/p/portcullis.toml")).unwrap();
        let route = &config.routes[0];
        assert_eq!(route.kind, RouteKind::Llm);
        let llm = route.llm.as_ref().unwrap();
        assert_eq!(llm.models[0].classification.as_str(), "internal");
        assert_eq!(llm.models[0].status, "approved");
        assert_eq!(llm.models[1].classification.as_str(), "restricted");
        assert_eq!(
            llm.api_key,
            Some(super::ApiKeySource::File("/etc/p/keys/llm.key".into()))
        );
        assert!(!llm.budget.is_limited());
    }
}
