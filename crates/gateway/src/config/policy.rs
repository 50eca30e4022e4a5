//! `[policy]`: where the Cedar policies come from, whether the directory is
//! watched, and the time zone policy sees wall-clock time in.

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use portcullis_control::config::PolicyTimeZone;

/// `[policy]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    /// Directory holding `schema.cedarschema` and `*.cedar`; relative paths are
    /// relative to the config file. Default: `<state dir>/policies`, seeded with the
    /// shipped schema and quickstart policies.
    pub dir: Option<PathBuf>,
    /// Watch the directory and install each valid change as a new policy
    /// version (about once a second). Default false: the store's active
    /// version decides, and changes arrive by `portcullis policy push`.
    #[serde(default)]
    pub watch: bool,
    /// IANA time zone of `context.time.hour` and `context.time.weekday`, e.g.
    /// `Europe/Berlin` (default `UTC`). `context.time.epoch` is zone-free.
    pub timezone: Option<String>,
}

/// Where the policies come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySource {
    /// A directory named in the config file.
    Dir(PathBuf),
    /// `<state dir>/policies`, seeded with the shipped defaults on first start.
    StateDir,
}

/// Checks that the time zone, when set, is known.
pub(super) fn check(policy: &RawPolicy) -> Result<(), String> {
    if let Some(zone) = &policy.timezone {
        PolicyTimeZone::new(zone).map_err(|e| format!("key `policy.timezone`: {e}"))?;
    }
    Ok(())
}

/// The policy directory: relative paths are relative to the config file.
pub(super) fn source(dir: Option<PathBuf>, base: &Path) -> PolicySource {
    match dir {
        Some(dir) if dir.is_absolute() => PolicySource::Dir(dir),
        Some(dir) => PolicySource::Dir(base.join(dir)),
        None => PolicySource::StateDir,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::check;

    #[test]
    fn policy_time_zone() {
        let berlin = PolicyTimeZone::new("Europe/Berlin").unwrap();
        // Tue 2023-11-14 22:13:20 UTC is 23:13 in Berlin (CET, UTC+1).
        let t = berlin.request_time(1_700_000_000);
        assert_eq!((t.hour, t.weekday, t.epoch), (23, 2, 1_700_000_000));
        // Sat 2023-07-22 04:26:40 UTC is 06:26 (CEST, UTC+2): daylight saving.
        assert_eq!(berlin.request_time(1_690_000_000).hour, 6);
        // Mon 2023-11-13 23:30 UTC is already Tuesday in Berlin.
        assert_eq!(berlin.request_time(1_699_918_200).weekday, 2);
        assert_eq!(
            PolicyTimeZone::default().request_time(1_700_000_000).hour,
            22
        );
        check(
            "[policy]\ntimezone = \"Mars/Olympus\"",
            "key `policy.timezone`: unknown time zone `Mars/Olympus`",
        );
        check(
            "[policy]\ntimezone = \"Europe/Berlin\"\nwatch = true",
            "ok ",
        );
    }
}
