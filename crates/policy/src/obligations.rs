//! Annotations a `permit` may carry, which the gateway enforces after Cedar
//! allows: `@obligation("approval" | "mfa" | "redact")` and `@rate("N/s|m|h")`.
//!
//! Any other annotation (besides `@id` and `@description`) is refused when the
//! bundle compiles, so a typo such as `@obligaton("approval")` cannot silently
//! drop a human from the loop.

use std::time::Duration;

/// The annotation keys a policy may carry.
pub const KNOWN_ANNOTATIONS: [&str; 4] = ["id", "description", "obligation", "rate"];

/// A rate limit: at most `count` requests per `per`, per agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    /// Requests allowed in one period.
    pub count: u32,
    /// The period.
    pub per: Duration,
}

impl Rate {
    /// Parses `60/m`, `5/s`, `1000/h`.
    pub fn parse(text: &str) -> Result<Rate, String> {
        let (count, unit) = text
            .split_once('/')
            .ok_or_else(|| format!("`{text}` is not `N/s`, `N/m` or `N/h`"))?;
        let count: u32 = count
            .trim()
            .parse()
            .ok()
            .filter(|c| *c > 0)
            .ok_or_else(|| format!("`{text}`: the count must be a whole number above 0"))?;
        let per = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(format!("`{text}`: the period must be `s`, `m` or `h`")),
        };
        Ok(Rate { count, per })
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "m",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

/// What the deciding policies of an allowed request ask the gateway to do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Obligations {
    /// A human must approve this exact call (or a grant must cover it).
    pub approval: bool,
    /// The delegating user must have fresh MFA.
    pub mfa: bool,
    /// Responses pass through DLP redaction.
    pub redact: bool,
    /// Per-agent rate limits, with the id of the policy that set each.
    pub rates: Vec<(String, Rate)>,
}

impl Obligations {
    /// Reads a policy's annotations. `annotations` yields (key, value).
    pub(crate) fn from_annotations<'a>(
        annotations: impl Iterator<Item = (&'a str, &'a str)>,
        policy_id: &str,
        is_permit: bool,
    ) -> Result<Obligations, String> {
        let mut out = Obligations::default();
        for (key, value) in annotations {
            match key {
                "id" | "description" => {}
                "obligation" => {
                    for word in value.split(',').map(str::trim) {
                        match word {
                            "approval" => out.approval = true,
                            "mfa" => out.mfa = true,
                            "redact" => out.redact = true,
                            other => {
                                return Err(format!(
                                    "unknown obligation `{other}` (known: approval, mfa, redact)"
                                ));
                            }
                        }
                    }
                }
                "rate" => out.rates.push((policy_id.to_string(), Rate::parse(value)?)),
                other => {
                    return Err(format!(
                        "unknown annotation `@{other}` (known: @{})",
                        KNOWN_ANNOTATIONS.join(", @")
                    ));
                }
            }
        }
        if !is_permit && out != Obligations::default() {
            return Err("obligations and rates apply to `permit` policies only".into());
        }
        Ok(out)
    }

    /// Whether there is nothing to enforce.
    pub fn is_empty(&self) -> bool {
        *self == Obligations::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(annotations: &[(&str, &str)], permit: bool, expect: &str) {
        let got = match Obligations::from_annotations(annotations.iter().copied(), "p", permit) {
            Ok(o) => format!(
                "approval={} mfa={} redact={} rates={}",
                o.approval,
                o.mfa,
                o.redact,
                o.rates
                    .iter()
                    .map(|(id, r)| format!("{id}:{r}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            Err(e) => format!("error: {e}"),
        };
        assert_eq!(got, expect, "{annotations:?}");
    }

    #[test]
    fn annotations() {
        check(
            &[("id", "x")],
            true,
            "approval=false mfa=false redact=false rates=",
        );
        check(
            &[("obligation", "approval, redact"), ("rate", "60/m")],
            true,
            "approval=true mfa=false redact=true rates=p:60/m",
        );
        check(
            &[("obligation", "mfa")],
            true,
            "approval=false mfa=true redact=false rates=",
        );
        check(
            &[("obligaton", "approval")],
            true,
            "error: unknown annotation `@obligaton` (known: @id, @description, @obligation, @rate)",
        );
        check(
            &[("obligation", "aproval")],
            true,
            "error: unknown obligation `aproval` (known: approval, mfa, redact)",
        );
        check(
            &[("rate", "0/m")],
            true,
            "error: `0/m`: the count must be a whole number above 0",
        );
        check(
            &[("rate", "5/d")],
            true,
            "error: `5/d`: the period must be `s`, `m` or `h`",
        );
        check(
            &[("rate", "5")],
            true,
            "error: `5` is not `N/s`, `N/m` or `N/h`",
        );
        check(
            &[("rate", "5/s")],
            false,
            "error: obligations and rates apply to `permit` policies only",
        );
    }
}
