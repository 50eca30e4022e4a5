//! `[store]`: the database URL.

use serde::{Deserialize, Deserializer};

/// `[store]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// Database URL, e.g. `sqlite:///var/lib/portcullis/portcullis.db`. Default: the
    /// SQLite file `portcullis.db` in the state directory.
    #[serde(default, deserialize_with = "opt_store_url")]
    pub url: Option<String>,
}

fn opt_store_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    if !s.starts_with("sqlite:") {
        return Err(serde::de::Error::custom(format!(
            "unsupported store url `{s}`: this build supports `sqlite:` URLs"
        )));
    }
    Ok(Some(s))
}
