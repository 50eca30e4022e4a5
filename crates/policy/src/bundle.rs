//! Loading, naming and validating a policy directory.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use crate::obligations::Obligations;

use cedar_policy::{Policy, PolicyId, PolicySet, Schema, ValidationMode, Validator};
use miette::Diagnostic;

/// The schema Portcullis ships; `serve` writes it into a fresh quickstart policy directory.
pub const DEFAULT_SCHEMA: &str = include_str!("../defaults/schema.cedarschema");
/// The example policies Portcullis ships with the quickstart.
pub const DEFAULT_POLICIES: &str = include_str!("../defaults/quickstart.cedar");

/// Policy ids of the policies Portcullis adds to a set start with this;
/// user policies may not.
pub const BUILTIN_PREFIX: &str = "builtin:";

/// The action group of MCP session plumbing (`mcp_session`, `notify`,
/// `reply`, `open_stream`, `end_session`).
pub const MCP_PLUMBING: &str = "mcp_plumbing";

/// The policy added to every set whose schema declares
/// `Action::"mcp_plumbing"`: a principal that some other permit names on an
/// MCP route may keep its session there (`builtin:mcp-plumbing`). It is a
/// policy like any other, so a `forbid` overrides it and `policy explain`
/// shows it.
pub const MCP_PLUMBING_POLICY: &str = include_str!("../defaults/mcp-plumbing.cedar");

/// The id of [`MCP_PLUMBING_POLICY`].
pub const MCP_PLUMBING_POLICY_ID: &str = "builtin:mcp-plumbing";

/// The policy added to every set whose schema gives `Model` the registry
/// attributes (`verified`, `lifecycle`, `digest`): models classified
/// confidential or above must be verified and not revoked
/// (`builtin:model-gate`, docs/governance.md).
pub const MODEL_GATE_POLICY: &str = include_str!("../defaults/model-gate.cedar");

/// The id of [`MODEL_GATE_POLICY`].
pub const MODEL_GATE_POLICY_ID: &str = "builtin:model-gate";

/// The policy added to every set whose schema gives `Dataset` its
/// `lifecycle`: nobody reads a revoked dataset (`builtin:dataset-gate`,
/// docs/governance.md).
pub const DATASET_GATE_POLICY: &str = include_str!("../defaults/dataset-gate.cedar");

/// The id of [`DATASET_GATE_POLICY`].
pub const DATASET_GATE_POLICY_ID: &str = "builtin:dataset-gate";

/// The schema file every policy directory must hold.
pub const SCHEMA_FILE: &str = "schema.cedarschema";

/// The raw text of a policy directory: one schema and any number of policy files.
#[derive(Debug, Clone)]
pub struct PolicySources {
    /// Where the sources came from, for messages.
    pub origin: PathBuf,
    /// The schema text.
    pub schema: String,
    /// `(file name, text)` of each `*.cedar` file, sorted by name so ids are stable.
    pub files: Vec<(String, String)>,
}

/// Why a policy directory could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A file could not be read.
    #[error("cannot read `{path}`: {source}")]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The schema does not parse.
    #[error("invalid schema `{path}`:\n{diagnostics}")]
    Schema {
        /// The schema file.
        path: PathBuf,
        /// Cedar's diagnostics, one per line.
        diagnostics: String,
    },
    /// A policy file does not parse.
    #[error("invalid policy file `{path}`:\n{diagnostics}")]
    Parse {
        /// The policy file.
        path: PathBuf,
        /// Cedar's diagnostics, with line and column.
        diagnostics: String,
    },
    /// Two policies share an id.
    #[error("duplicate policy id `{id}` (in `{path}`)")]
    DuplicateId {
        /// The repeated id.
        id: String,
        /// The file holding the second occurrence.
        path: PathBuf,
    },
    /// Templates are not supported in policy files yet.
    #[error("`{path}` holds a policy template; templates are not supported in policy files")]
    Template {
        /// The policy file.
        path: PathBuf,
    },
    /// A policy carries an annotation the gateway does not know, or a bad value.
    #[error("policy `{id}` in `{path}`: {message}")]
    Annotation {
        /// The policy file.
        path: PathBuf,
        /// The policy id.
        id: String,
        /// What is wrong.
        message: String,
    },
    /// A pushed file set is not a policy directory.
    #[error("{0}")]
    Files(String),
    /// The policies do not validate against the schema.
    #[error("policies in `{dir}` do not validate against the schema:\n{diagnostics}")]
    Validation {
        /// The policy directory.
        dir: PathBuf,
        /// Cedar's diagnostics, one per problem, naming the policy id.
        diagnostics: String,
    },
}

impl PolicySources {
    /// Reads `schema.cedarschema` and every `*.cedar` file of `dir` (not recursive).
    pub fn read_dir(dir: &Path) -> Result<Self, PolicyError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
                path: path.to_path_buf(),
                source,
            })
        };
        let schema = read(&dir.join(SCHEMA_FILE))?;
        let entries = std::fs::read_dir(dir).map_err(|source| PolicyError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| PolicyError::Read {
                path: dir.to_path_buf(),
                source,
            })?;
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "cedar") && path.is_file() {
                let name = entry.file_name().to_string_lossy().into_owned();
                files.push((name, read(&path)?));
            }
        }
        files.sort();
        Ok(PolicySources {
            origin: dir.to_path_buf(),
            schema,
            files,
        })
    }

    /// The sources as one map of file name to text, the schema under
    /// `schema.cedarschema`: the form versions are stored and pushed in.
    pub fn to_files(&self) -> BTreeMap<String, String> {
        let mut files: BTreeMap<String, String> = self.files.iter().cloned().collect();
        files.insert(SCHEMA_FILE.to_string(), self.schema.clone());
        files
    }

    /// The inverse of [`PolicySources::to_files`]. Every name must be a plain
    /// file name ending in `.cedar`, besides the schema.
    pub fn from_files(
        origin: PathBuf,
        files: &BTreeMap<String, String>,
    ) -> Result<Self, PolicyError> {
        let schema = files
            .get(SCHEMA_FILE)
            .cloned()
            .ok_or_else(|| PolicyError::Files(format!("no `{SCHEMA_FILE}` among the files")))?;
        let mut out = Vec::new();
        for (name, text) in files {
            if name == SCHEMA_FILE {
                continue;
            }
            let plain =
                !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\\', '\0']);
            if !plain || !name.ends_with(".cedar") {
                return Err(PolicyError::Files(format!(
                    "`{name}` is not a policy file name (`<name>.cedar`, no directories)"
                )));
            }
            out.push((name.clone(), text.clone()));
        }
        Ok(PolicySources {
            origin,
            schema,
            files: out,
        })
    }

    /// SHA-256 (hex) of the files' canonical encoding: for each file in name
    /// order, the length-prefixed name and text. Equal directories hash equal
    /// wherever they are.
    pub fn content_hash(&self) -> String {
        let mut hash = Sha256::new();
        for (name, text) in self.to_files() {
            for part in [name.as_bytes(), text.as_bytes()] {
                hash.update((part.len() as u64).to_be_bytes());
                hash.update(part);
            }
        }
        hex_lower(&hash.finalize())
    }

    /// The shipped default schema and quickstart policies.
    pub fn defaults() -> Self {
        PolicySources {
            origin: PathBuf::from("<built-in>"),
            schema: DEFAULT_SCHEMA.to_string(),
            files: vec![("quickstart.cedar".to_string(), DEFAULT_POLICIES.to_string())],
        }
    }
}

/// A parsed, validated set of policies with its schema. Immutable once compiled.
#[derive(Debug)]
pub struct PolicyBundle {
    pub(crate) schema: Schema,
    pub(crate) policies: PolicySet,
    ids: Vec<String>,
    /// What each `permit` with annotations asks the gateway to enforce.
    pub(crate) obligations: HashMap<String, Obligations>,
    /// Whether the schema's `Model` has the registry attributes (and so
    /// the set holds `builtin:model-gate`).
    pub(crate) model_registry: bool,
    /// Whether the schema's `Dataset` has `lifecycle` (and so the set
    /// holds `builtin:dataset-gate`).
    pub(crate) dataset_lifecycle: bool,
    sources: PolicySources,
    hash: String,
}

impl PolicyBundle {
    /// Parses the schema and policies, gives every policy a stable id and validates
    /// the set in strict mode. A policy's id is its `@id("…")` annotation when it has
    /// one, otherwise `<file>:<n>` (its 1-based position in the file).
    pub fn compile(sources: &PolicySources) -> Result<Self, PolicyError> {
        let schema_path = sources.origin.join(SCHEMA_FILE);
        let (schema, _warnings) =
            Schema::from_cedarschema_str(&sources.schema).map_err(|e| PolicyError::Schema {
                path: schema_path.clone(),
                diagnostics: render(&e, &sources.schema),
            })?;

        let mut policies = PolicySet::new();
        let mut ids = Vec::new();
        let mut obligations = HashMap::new();
        for (name, text) in &sources.files {
            let path = sources.origin.join(name);
            let parsed = PolicySet::from_str(text).map_err(|e| PolicyError::Parse {
                path: path.clone(),
                diagnostics: render(&e, text),
            })?;
            if parsed.templates().next().is_some() {
                return Err(PolicyError::Template { path });
            }
            // `PolicySet::from_str` numbers policies `policy0…` in source order, but
            // `policies()` iterates in hash order; sort by that number to keep file order.
            let mut in_file: Vec<_> = parsed.policies().collect();
            in_file.sort_by_key(|p| {
                p.id()
                    .to_string()
                    .trim_start_matches("policy")
                    .parse::<usize>()
                    .unwrap_or(usize::MAX)
            });
            for (n, policy) in in_file.into_iter().enumerate() {
                let id = match policy.annotation("id") {
                    Some(id) => id.to_string(),
                    None => format!("{name}:{}", n + 1),
                };
                if id.starts_with(crate::GRANT_PREFIX) || id.starts_with(crate::BREAKGLASS_PREFIX) {
                    return Err(PolicyError::Annotation {
                        path: path.clone(),
                        id: id.clone(),
                        message: format!(
                            "ids starting with `{}` or `{}` are reserved for grants",
                            crate::GRANT_PREFIX,
                            crate::BREAKGLASS_PREFIX
                        ),
                    });
                }
                if id.starts_with(BUILTIN_PREFIX) {
                    return Err(PolicyError::Annotation {
                        path: path.clone(),
                        id: id.clone(),
                        message: format!(
                            "ids starting with `{BUILTIN_PREFIX}` are reserved for the policies Portcullis adds"
                        ),
                    });
                }
                if id.starts_with(crate::ANALYTICS_PREFIX) {
                    return Err(PolicyError::Annotation {
                        path: path.clone(),
                        id: id.clone(),
                        message: format!(
                            "ids starting with `{}` are reserved for behavioral analytics",
                            crate::ANALYTICS_PREFIX
                        ),
                    });
                }
                let found = Obligations::from_annotations(
                    policy.annotations(),
                    &id,
                    policy.effect() == cedar_policy::Effect::Permit,
                )
                .map_err(|message| PolicyError::Annotation {
                    path: path.clone(),
                    id: id.clone(),
                    message,
                })?;
                if !found.is_empty() {
                    obligations.insert(id.clone(), found);
                }
                let renamed = policy.new_id(PolicyId::new(&id));
                policies
                    .add(renamed)
                    .map_err(|_| PolicyError::DuplicateId {
                        id: id.clone(),
                        path: path.clone(),
                    })?;
                ids.push(id);
            }
        }
        // Session plumbing on MCP routes is decided like every message; the
        // default that keeps sessions working is this visible policy, not
        // a bypass. A schema written before the plumbing actions gets none.
        let plumbing = schema
            .actions()
            .any(|a| a.type_name().to_string() == "Action" && a.id().unescaped() == MCP_PLUMBING);
        if plumbing {
            let builtin = Policy::parse(
                Some(PolicyId::new(MCP_PLUMBING_POLICY_ID)),
                MCP_PLUMBING_POLICY,
            )
            .map_err(|e| PolicyError::Parse {
                path: PathBuf::from(MCP_PLUMBING_POLICY_ID),
                diagnostics: render(&e, MCP_PLUMBING_POLICY),
            })?;
            policies
                .add(builtin)
                .map_err(|_| PolicyError::DuplicateId {
                    id: MCP_PLUMBING_POLICY_ID.to_string(),
                    path: sources.origin.clone(),
                })?;
            ids.push(MCP_PLUMBING_POLICY_ID.to_string());
        }

        // The model gate: added when the schema declares the attributes it
        // reads, which is exactly when it validates on its own. A schema
        // written before the registry gets none, and its routes may not
        // name registry entries (`Authorizer::supports_model_registry`).
        let model_registry = add_gate(
            &schema,
            &mut policies,
            &mut ids,
            &sources.origin,
            MODEL_GATE_POLICY_ID,
            MODEL_GATE_POLICY,
        )?;
        // The dataset gate likewise: a schema whose `Dataset` has no
        // `lifecycle` gets none (and its entities carry none).
        let dataset_lifecycle = add_gate(
            &schema,
            &mut policies,
            &mut ids,
            &sources.origin,
            DATASET_GATE_POLICY_ID,
            DATASET_GATE_POLICY,
        )?;

        let result = Validator::new(schema.clone()).validate(&policies, ValidationMode::Strict);
        if !result.validation_passed() {
            let mut diagnostics = String::new();
            for error in result.validation_errors() {
                let _ = writeln!(diagnostics, "  policy `{}`: {}", error.policy_id(), error);
                if let Some(help) = error.help() {
                    let _ = writeln!(diagnostics, "    help: {help}");
                }
            }
            return Err(PolicyError::Validation {
                dir: sources.origin.clone(),
                diagnostics,
            });
        }
        Ok(PolicyBundle {
            schema,
            policies,
            ids,
            obligations,
            model_registry,
            dataset_lifecycle,
            hash: sources.content_hash(),
            sources: sources.clone(),
        })
    }

    /// The sources this bundle was compiled from.
    pub fn sources(&self) -> &PolicySources {
        &self.sources
    }

    /// [`PolicySources::content_hash`] of the sources.
    pub fn content_hash(&self) -> &str {
        &self.hash
    }

    /// Whether any policy carries `@obligation("redact")` (the gateway then
    /// needs its content guard).
    pub fn redacts(&self) -> bool {
        self.obligations.values().any(|o| o.redact)
    }

    /// What policy `id` asks the gateway to enforce when it permits.
    pub fn obligations_of(&self, id: &str) -> Option<&Obligations> {
        self.obligations.get(id)
    }

    /// The ids of all policies, in directory order.
    pub fn policy_ids(&self) -> &[String] {
        &self.ids
    }

    /// Whether the schema declares `Action::"use_secret"`, which routes with a
    /// vault credential need.
    pub fn supports_secrets(&self) -> bool {
        self.schema
            .actions()
            .any(|a| a.id().unescaped() == crate::USE_SECRET)
    }

    /// Whether the schema declares the model actions (`complete`, `embed`),
    /// which routes of kind `llm` need.
    pub fn supports_models(&self) -> bool {
        crate::model::schema_supports_models(&self.schema)
    }
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Renders a Cedar diagnostic with the line and column of each labelled span.
/// Adds the built-in gate `text` (id `id`) to `policies` when the schema
/// declares what it reads, which is exactly when it validates on its own;
/// says whether it did. A schema written before the gate gets none.
fn add_gate(
    schema: &Schema,
    policies: &mut PolicySet,
    ids: &mut Vec<String>,
    origin: &Path,
    id: &str,
    text: &str,
) -> Result<bool, PolicyError> {
    let gate = Policy::parse(Some(PolicyId::new(id)), text).map_err(|e| PolicyError::Parse {
        path: PathBuf::from(id),
        diagnostics: render(&e, text),
    })?;
    let fits = {
        let mut alone = PolicySet::new();
        alone.add(gate.clone()).is_ok()
            && Validator::new(schema.clone())
                .validate(&alone, ValidationMode::Strict)
                .validation_passed()
    };
    if fits {
        policies.add(gate).map_err(|_| PolicyError::DuplicateId {
            id: id.to_string(),
            path: origin.to_path_buf(),
        })?;
        ids.push(id.to_string());
    }
    Ok(fits)
}

fn render(error: &(dyn Diagnostic + 'static), source: &str) -> String {
    let mut out = String::new();
    let mut push = |d: &dyn Diagnostic| {
        let _ = write!(out, "  {d}");
        if let Some(labels) = d.labels() {
            for label in labels {
                let (line, col) = line_col(source, label.offset());
                let _ = write!(out, " (line {line}, column {col})");
            }
        }
        if let Some(help) = d.help() {
            let _ = write!(out, "\n    help: {help}");
        }
        out.push('\n');
    };
    match error.related() {
        Some(related) => {
            let mut any = false;
            for d in related {
                any = true;
                push(d);
            }
            if !any {
                push(error);
            }
        }
        None => push(error),
    }
    out
}

fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let before = &source[..offset.min(source.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(policies: &str) -> PolicySources {
        PolicySources {
            origin: PathBuf::from("/p"),
            schema: DEFAULT_SCHEMA.to_string(),
            files: vec![("a.cedar".to_string(), policies.to_string())],
        }
    }

    #[test]
    fn defaults_compile_with_annotated_ids() {
        let bundle = PolicyBundle::compile(&PolicySources::defaults()).unwrap();
        assert_eq!(
            bundle.policy_ids(),
            [
                "readers-read-low",
                "writers-write-public",
                "no-remote-delete",
                "datasets-read-low",
                MCP_PLUMBING_POLICY_ID,
                MODEL_GATE_POLICY_ID,
                DATASET_GATE_POLICY_ID
            ]
        );
    }

    /// The plumbing default is added only where the schema declares the
    /// group, and its id is reserved.
    #[test]
    fn the_plumbing_default_is_built_in_and_reserved() {
        let without = DEFAULT_SCHEMA
            .split("// MCP session plumbing")
            .next()
            .unwrap();
        let bundle = PolicyBundle::compile(&PolicySources {
            schema: without.to_string(),
            ..sources("")
        })
        .unwrap();
        // The schema's `Model` and `Dataset` still have the registry
        // attributes: the gates stay.
        assert_eq!(
            bundle.policy_ids(),
            [MODEL_GATE_POLICY_ID, DATASET_GATE_POLICY_ID]
        );
        // A `Dataset` without `lifecycle` (a schema written before it): no
        // dataset gate, and its entities carry none.
        let old = DEFAULT_SCHEMA.replace(
            "  lifecycle: String,\n};\n\ntype DatasetContext",
            "};\n\ntype DatasetContext",
        );
        assert_ne!(old, DEFAULT_SCHEMA);
        let bundle = PolicyBundle::compile(&PolicySources {
            schema: old,
            ..sources("")
        })
        .unwrap();
        assert!(!bundle.dataset_lifecycle);
        assert!(
            !bundle
                .policy_ids()
                .iter()
                .any(|id| id == DATASET_GATE_POLICY_ID)
        );
        let err = PolicyBundle::compile(&sources(
            "@id(\"builtin:mine\") permit(principal, action, resource);",
        ))
        .unwrap_err();
        assert!(err.to_string().contains("reserved"), "{err}");
    }

    #[test]
    fn unannotated_policies_are_named_by_file_and_position() {
        let bundle = PolicyBundle::compile(&sources(
            "permit(principal, action == Action::\"GET\", resource);\n\
             forbid(principal, action == Action::\"PUT\", resource);",
        ))
        .unwrap();
        assert_eq!(
            bundle.policy_ids(),
            [
                "a.cedar:1",
                "a.cedar:2",
                MCP_PLUMBING_POLICY_ID,
                MODEL_GATE_POLICY_ID,
                DATASET_GATE_POLICY_ID
            ]
        );
    }

    #[test]
    fn parse_errors_name_file_and_line() {
        let err = PolicyBundle::compile(&sources("permit(principal,\n action, resource) when {"))
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("/p/a.cedar"), "{text}");
        assert!(text.contains("line 2"), "{text}");
    }

    #[test]
    fn validation_errors_name_the_policy() {
        let err = PolicyBundle::compile(&sources(
            "@id(\"typo\") permit(principal, action, resource) when { resource.clasification == \"public\" };",
        ))
        .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, PolicyError::Validation { .. }), "{text}");
        assert!(text.contains("`typo`"), "{text}");
    }

    #[test]
    fn duplicate_ids_are_refused() {
        let err = PolicyBundle::compile(&sources(
            "@id(\"x\") permit(principal, action, resource);\n@id(\"x\") forbid(principal, action, resource);",
        ))
        .unwrap_err();
        assert!(matches!(err, PolicyError::DuplicateId { .. }), "{err}");
    }

    #[test]
    fn unknown_annotations_are_refused() {
        let err = PolicyBundle::compile(&sources(
            "@id(\"x\") @obligaton(\"approval\") permit(principal, action, resource);",
        ))
        .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, PolicyError::Annotation { .. }), "{text}");
        assert!(
            text.contains("`@obligaton`") && text.contains("policy `x`"),
            "{text}"
        );
        let bundle = PolicyBundle::compile(&sources(
            "@id(\"x\") @obligation(\"approval\") @rate(\"10/s\") permit(principal, action, resource);",
        ))
        .unwrap();
        let o = bundle.obligations_of("x").unwrap();
        assert!(o.approval && o.rates.len() == 1);
    }

    #[test]
    fn files_round_trip_and_hash_by_content() {
        let a = PolicySources::defaults();
        let files = a.to_files();
        let b = PolicySources::from_files(PathBuf::from("/elsewhere"), &files).unwrap();
        assert_eq!(a.content_hash(), b.content_hash());
        assert_eq!(a.content_hash().len(), 64);
        let mut changed = files.clone();
        changed.insert("z.cedar".into(), String::new());
        let c = PolicySources::from_files(PathBuf::new(), &changed).unwrap();
        assert_ne!(a.content_hash(), c.content_hash());
        for bad in ["../x.cedar", "x.txt", ".hidden.cedar"] {
            let mut files = files.clone();
            files.insert(bad.into(), String::new());
            assert!(
                PolicySources::from_files(PathBuf::new(), &files).is_err(),
                "{bad}"
            );
        }
        let mut no_schema = files;
        no_schema.remove(SCHEMA_FILE);
        assert!(PolicySources::from_files(PathBuf::new(), &no_schema).is_err());
    }

    #[test]
    fn reads_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(SCHEMA_FILE), DEFAULT_SCHEMA).unwrap();
        std::fs::write(dir.path().join("b.cedar"), DEFAULT_POLICIES).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let sources = PolicySources::read_dir(dir.path()).unwrap();
        assert_eq!(sources.files.len(), 1);
        PolicyBundle::compile(&sources).unwrap();
        assert!(matches!(
            PolicySources::read_dir(&dir.path().join("missing")),
            Err(PolicyError::Read { .. })
        ));
    }
}
