//! Explicit rules for the unmistakable. They need no baseline, so they work
//! from an agent's first request; each hit carries the risk it implies.

use serde::{Deserialize, Serialize};

use crate::features::{Novelty, Tracker};

/// A rule that fired, with the numbers that made it fire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum RuleHit {
    /// At least the configured number of denied requests within 10 seconds.
    DenialBurst {
        /// Denials in the last 10 s.
        denials_10s: u64,
    },
    /// The request rate over the last 10 seconds, per minute, is at least
    /// `factor` times the baseline's peak requests per minute.
    RateSpike {
        /// Requests in the last 10 s, times 6.
        requests_per_min: u64,
        /// The baseline's requests per minute.
        baseline_1m: f32,
    },
    /// A `restricted` resource the agent's baseline does not know.
    FirstRestricted {
        /// Whether the agent had ever touched restricted data before.
        had_restricted: bool,
    },
}

/// What the rules know about the event and the agent besides its windows.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Facts {
    /// The event touched restricted data.
    pub(crate) restricted: bool,
    /// The agent's baseline has restricted data.
    pub(crate) had_restricted: bool,
    /// The agent's (or the population's) peak requests per minute, if any.
    pub(crate) baseline_1m: Option<f32>,
    /// The agent's own baseline is complete.
    pub(crate) learned: bool,
}

/// The rules' settings.
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    pub(crate) denial_burst: u64,
    pub(crate) spike_factor: f32,
    pub(crate) spike_min: u64,
}

impl Rules {
    /// Checks the rules after `tracker` counted the event; pushes each hit
    /// with its risk. A brand-new agent's first restricted read is worth an
    /// alert; a learned agent's that never read restricted data, more.
    pub(crate) fn check(
        &self,
        tracker: &Tracker,
        novelty: &Novelty,
        facts: &Facts,
        hits: &mut Vec<(RuleHit, f32)>,
    ) {
        let Facts {
            restricted,
            had_restricted,
            baseline_1m,
            learned,
        } = *facts;
        let denials = tracker.denies_10s();
        if denials >= self.denial_burst {
            hits.push((
                RuleHit::DenialBurst {
                    denials_10s: denials,
                },
                1.0,
            ));
        }
        // A 10-second window, scaled to a minute: a sudden spike shows in
        // seconds, not after a minute has filled.
        let requests = tracker.requests_10s() * 6;
        if let Some(baseline_1m) = baseline_1m
            && requests >= self.spike_min
            && requests as f32 >= self.spike_factor * baseline_1m
        {
            hits.push((
                RuleHit::RateSpike {
                    requests_per_min: requests,
                    baseline_1m,
                },
                1.0,
            ));
        }
        if restricted && novelty.new_resource {
            // Never restricted before is the strong signal; a new dataset for an
            // agent that reads restricted data anyway is worth a look.
            let risk = match (learned, had_restricted) {
                (true, false) => 0.8,
                (true, true) => 0.4,
                (false, _) => 0.5,
            };
            hits.push((RuleHit::FirstRestricted { had_restricted }, risk));
        }
    }
}
