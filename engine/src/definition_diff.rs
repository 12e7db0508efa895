//! What changes between two versions of a saga definition, step by step.

use serde::{Deserialize, Serialize};

use crate::definition::SagaDefinition;

/// The differences of a definition from an earlier version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DefinitionDiff {
    /// Steps only the new version has.
    pub added: Vec<String>,
    /// Steps only the old version has.
    pub removed: Vec<String>,
    /// Steps both have, with the fields that differ (`position` when it moved).
    pub changed: Vec<StepChange>,
    /// Fields of the definition itself that differ (`stuck_after_ms`, `on_open_circuit`).
    #[serde(default)]
    pub fields: Vec<String>,
}

/// One step present in both versions that differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StepChange {
    pub step: String,
    pub fields: Vec<String>,
}

impl DefinitionDiff {
    /// The differences of `new` from `old`; every step is added when there is no `old`.
    pub fn between(old: Option<&SagaDefinition>, new: &SagaDefinition) -> Self {
        let old_steps = old.map(|d| d.steps.as_slice()).unwrap_or_default();
        let mut diff = Self::default();
        for (at, step) in new.steps.iter().enumerate() {
            let Some(was_at) = old.and_then(|d| d.step_index(&step.name)) else {
                diff.added.push(step.name.clone());
                continue;
            };
            let was = &old_steps[was_at];
            let mut fields = Vec::new();
            if was_at != at {
                fields.push("position");
            }
            if was.participant != step.participant {
                fields.push("participant");
            }
            if was.command != step.command {
                fields.push("command");
            }
            if was.compensation != step.compensation {
                fields.push("compensation");
            }
            if was.timeout_ms != step.timeout_ms {
                fields.push("timeout_ms");
            }
            if was.retry != step.retry {
                fields.push("retry");
            }
            if !fields.is_empty() {
                diff.changed
                    .push(StepChange { step: step.name.clone(), fields: fields.into_iter().map(Into::into).collect() });
            }
        }
        diff.removed = old_steps.iter().filter(|s| new.step_index(&s.name).is_none()).map(|s| s.name.clone()).collect();
        if old.is_some_and(|d| d.stuck_after_ms != new.stuck_after_ms) {
            diff.fields.push("stuck_after_ms".into());
        }
        if old.is_some_and(|d| d.on_open_circuit != new.on_open_circuit) {
            diff.fields.push("on_open_circuit".into());
        }
        diff
    }

    /// Whether the two versions differ in anything but their version number.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty() && self.fields.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::{RetryPolicy, StepDefinition};

    fn step(name: &str, command: &str) -> StepDefinition {
        StepDefinition {
            name: name.into(),
            participant: "p".into(),
            command: command.into(),
            compensation: Some("Undo".into()),
            timeout_ms: 1_000,
            retry: RetryPolicy::default(),
        }
    }

    #[test]
    fn lists_added_removed_and_changed_steps() {
        let old = SagaDefinition {
            stuck_after_ms: None,
            on_open_circuit: Default::default(),
            name: "s".into(),
            version: 1,
            steps: vec![step("a", "A"), step("b", "B"), step("c", "C")],
        };
        let mut slower = step("c", "C");
        slower.timeout_ms = 5_000;
        let new = SagaDefinition {
            stuck_after_ms: None,
            on_open_circuit: Default::default(),
            name: "s".into(),
            version: 0,
            steps: vec![step("a", "A2"), slower, step("d", "D")],
        };
        let diff = DefinitionDiff::between(Some(&old), &new);
        assert_eq!(diff.added, ["d"]);
        assert_eq!(diff.removed, ["b"]);
        assert_eq!(
            diff.changed,
            [
                StepChange { step: "a".into(), fields: vec!["command".into()] },
                StepChange { step: "c".into(), fields: vec!["position".into(), "timeout_ms".into()] },
            ]
        );
        assert_eq!(DefinitionDiff::between(None, &new).added, ["a", "c", "d"]);
        assert_eq!(DefinitionDiff::between(Some(&old), &old), DefinitionDiff::default());
    }
}
