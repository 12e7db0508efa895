//! Saga definitions: data that says which steps run, where, and how they are undone.

use std::collections::HashSet;
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A saga definition as registered (JSON). `version` is assigned by the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SagaDefinition {
    pub name: String,
    /// Assigned on registration (1, 2, …); ignored on input.
    #[serde(default)]
    pub version: u32,
    pub steps: Vec<StepDefinition>,
    /// How long a saga of this definition may go without progress before it counts as stuck;
    /// the engine's default (`--stuck-after`) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stuck_after_ms: Option<u64>,
    /// What a step does while its participant's circuit is open.
    #[serde(default, skip_serializing_if = "OnOpenCircuit::is_hold")]
    pub on_open_circuit: OnOpenCircuit,
}

/// What a step does while its participant's circuit is open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnOpenCircuit {
    /// The command waits, spending no attempt and running no timeout, until the circuit closes.
    #[default]
    Hold,
    /// The step fails at once and the saga compensates. Compensations always wait.
    Fail,
}

impl OnOpenCircuit {
    fn is_hold(&self) -> bool {
        *self == Self::Hold
    }
}

/// One step of a saga.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepDefinition {
    pub name: String,
    /// Who executes the step; its commands go to `<prefix>.commands.<participant>`.
    pub participant: String,
    /// The command type sent to run the step.
    pub command: String,
    /// The command type sent to undo the step. The first step without one is the pivot; later
    /// steps without one are retriable: they run after the pivot and are never undone.
    #[serde(default)]
    pub compensation: Option<String>,
    /// How long one attempt may take before it counts as timed out.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default)]
    pub retry: RetryPolicy,
}

fn default_timeout_ms() -> u64 {
    30_000
}

/// How often a step (or its compensation) is attempted, and how long to wait between attempts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// Growth factor of the backoff between attempts.
    pub multiplier: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { max_attempts: 3, initial_backoff_ms: 200, max_backoff_ms: 10_000, multiplier: 2 }
    }
}

impl RetryPolicy {
    /// The wait before attempt `next_attempt` (2, 3, …): exponential, capped, with jitter
    /// drawn from the upper half so that retries of many sagas spread out.
    pub fn backoff(&self, next_attempt: u32) -> Duration {
        let exponent = next_attempt.saturating_sub(2).min(30);
        let base = self
            .initial_backoff_ms
            .saturating_mul(u64::from(self.multiplier.max(1)).saturating_pow(exponent))
            .min(self.max_backoff_ms);
        let jittered = if base < 2 { base } else { rand::rng().random_range(base / 2..=base) };
        Duration::from_millis(jittered)
    }
}

impl StepDefinition {
    /// The step's timeout as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

const MAX_STEPS: usize = 50;
const MAX_TIMEOUT_MS: u64 = 24 * 60 * 60 * 1000;
/// The longest stuck threshold a definition may set: 30 days.
const MAX_STUCK_AFTER_MS: u64 = 30 * 24 * 60 * 60 * 1000;
const MAX_ATTEMPTS: u32 = 100;

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 100 && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl SagaDefinition {
    /// Checks the definition and returns every problem found.
    pub fn validate(&self) -> Result<()> {
        let mut problems = Vec::new();
        if !valid_name(&self.name) {
            problems.push(format!("name '{}' must be 1-100 characters of letters, digits, '-', '_' or '.'", self.name));
        }
        if self.steps.is_empty() {
            problems.push("a saga needs at least one step".to_owned());
        }
        if self.stuck_after_ms.is_some_and(|ms| !(1_000..=MAX_STUCK_AFTER_MS).contains(&ms)) {
            problems.push(format!("stuck_after_ms must be between 1000 and {MAX_STUCK_AFTER_MS}"));
        }
        if self.steps.len() > MAX_STEPS {
            problems.push(format!("a saga may have at most {MAX_STEPS} steps"));
        }
        let mut seen = HashSet::new();
        for (i, step) in self.steps.iter().enumerate() {
            let at = format!("steps[{i}] ('{}')", step.name);
            if !valid_name(&step.name) {
                problems.push(format!("{at}: name must be 1-100 characters of letters, digits, '-', '_' or '.'"));
            }
            if !seen.insert(step.name.as_str()) {
                problems.push(format!("{at}: duplicate step name '{}'", step.name));
            }
            if !valid_name(&step.participant) {
                problems
                    .push(format!("{at}: participant must be 1-100 characters of letters, digits, '-', '_' or '.'"));
            }
            if step.command.trim().is_empty() {
                problems.push(format!("{at}: command must not be empty"));
            }
            if step.compensation.as_deref().is_some_and(|c| c.trim().is_empty()) {
                problems.push(format!("{at}: compensation must not be empty when given"));
            }
            if step.timeout_ms == 0 || step.timeout_ms > MAX_TIMEOUT_MS {
                problems.push(format!("{at}: timeout_ms must be between 1 and {MAX_TIMEOUT_MS}"));
            }
            let retry = &step.retry;
            if retry.max_attempts == 0 || retry.max_attempts > MAX_ATTEMPTS {
                problems.push(format!("{at}: retry.max_attempts must be between 1 and {MAX_ATTEMPTS}"));
            }
            if retry.initial_backoff_ms > retry.max_backoff_ms {
                problems.push(format!("{at}: retry.initial_backoff_ms must not exceed retry.max_backoff_ms"));
            }
            if retry.max_backoff_ms > MAX_TIMEOUT_MS {
                problems.push(format!("{at}: retry.max_backoff_ms must be at most {MAX_TIMEOUT_MS}"));
            }
            if retry.multiplier == 0 || retry.multiplier > 10 {
                problems.push(format!("{at}: retry.multiplier must be between 1 and 10"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidDefinition(problems))
        }
    }

    /// The pivot: the first step without a compensation. Once it has succeeded, the saga
    /// can only go forward.
    pub fn pivot(&self) -> Option<usize> {
        self.steps.iter().position(|s| s.compensation.is_none())
    }

    /// The index of the step named `name`.
    pub fn step_index(&self, name: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.name == name)
    }

    /// Every participant the definition sends commands to.
    pub fn participants(&self) -> Vec<String> {
        let mut out: Vec<String> = self.steps.iter().map(|s| s.participant.clone()).collect();
        out.sort();
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(name: &str, compensation: Option<&str>) -> StepDefinition {
        StepDefinition {
            name: name.into(),
            participant: "p".into(),
            command: "Do".into(),
            compensation: compensation.map(Into::into),
            timeout_ms: 1000,
            retry: RetryPolicy::default(),
        }
    }

    #[test]
    fn valid_definition_with_one_pivot_passes() {
        let def = SagaDefinition {
            stuck_after_ms: None,
            on_open_circuit: Default::default(),
            name: "s".into(),
            version: 0,
            steps: vec![step("a", Some("Undo")), step("b", None)],
        };
        def.validate().unwrap();
        assert_eq!(def.pivot(), Some(1));
    }

    #[test]
    fn steps_after_the_pivot_may_lack_a_compensation() {
        let steps = vec![step("a", Some("Undo")), step("pivot", None), step("settle", None)];
        let def = SagaDefinition {
            stuck_after_ms: None,
            on_open_circuit: Default::default(),
            name: "s".into(),
            version: 0,
            steps,
        };
        def.validate().unwrap();
        assert_eq!(def.pivot(), Some(1), "the first step without a compensation is the pivot");
    }

    #[test]
    fn every_problem_is_listed() {
        let mut bad = step("a", None);
        bad.timeout_ms = 0;
        bad.retry.max_attempts = 0;
        let def = SagaDefinition {
            stuck_after_ms: None,
            on_open_circuit: Default::default(),
            name: "bad name!".into(),
            version: 0,
            steps: vec![bad, step("a", None)],
        };
        let Err(Error::InvalidDefinition(problems)) = def.validate() else { panic!("must be invalid") };
        let text = problems.join("\n");
        for expected in ["name 'bad name!'", "duplicate step name 'a'", "timeout_ms", "max_attempts"] {
            assert!(text.contains(expected), "missing '{expected}' in:\n{text}");
        }
        assert_eq!(problems.len(), 4);
    }

    #[test]
    fn empty_definition_is_rejected() {
        let def = SagaDefinition {
            stuck_after_ms: None,
            on_open_circuit: Default::default(),
            name: "s".into(),
            version: 0,
            steps: vec![],
        };
        assert!(matches!(def.validate(), Err(Error::InvalidDefinition(p)) if p.len() == 1));
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let json = r#"{"name":"s","steps":[],"stepz":[]}"#;
        assert!(serde_json::from_str::<SagaDefinition>(json).is_err());
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let policy = RetryPolicy { max_attempts: 10, initial_backoff_ms: 100, max_backoff_ms: 1000, multiplier: 2 };
        for _ in 0..50 {
            let second = policy.backoff(2).as_millis();
            assert!((50..=100).contains(&second), "{second}");
            let third = policy.backoff(3).as_millis();
            assert!((100..=200).contains(&third), "{third}");
            let tenth = policy.backoff(10).as_millis();
            assert!((500..=1000).contains(&tenth), "{tenth}");
        }
    }
}
