//! A circuit breaker per participant. A participant that keeps timing out or answering with
//! retryable failures gets its circuit opened: new commands to it wait (or, per definition,
//! fail fast) instead of spending attempts; after a cool-down one probe goes through, and
//! its success closes the circuit and wakes the waiting sagas.
//!
//! The state is this process's: each coordinator judges from the replies and timeouts it
//! handles, as client-side breakers do.

use std::collections::{HashMap, HashSet, VecDeque};
use std::str::FromStr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::saga::Gate;

/// When a participant's circuit opens, and for how long.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerPolicy {
    /// The share of failed outcomes (timeouts, retryable failures) over `window` at which the
    /// circuit opens, in (0, 1].
    pub failure_rate: f64,
    /// The fewest outcomes in `window` the rate is judged on.
    pub min_calls: u32,
    /// How far back outcomes count.
    pub window: Duration,
    /// How long the circuit stays open before a probe may go through.
    pub cool_down: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self { failure_rate: 0.5, min_calls: 5, window: Duration::from_secs(30), cool_down: Duration::from_secs(15) }
    }
}

/// A `--circuit-breaker` setting: `key=value,…` for the defaults, or `participant:key=value,…`
/// for one participant. Keys: `failure_rate`, `min_calls`, `window`, `cool_down`.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerSetting {
    /// The participant it applies to; the defaults when absent.
    pub participant: Option<String>,
    pairs: Vec<(String, String)>,
}

impl FromStr for BreakerSetting {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (participant, rest) = match text.split_once(':') {
            Some((p, rest)) if !p.contains('=') => (Some(p.trim().to_owned()), rest),
            _ => (None, text),
        };
        let pairs = rest
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|pair| {
                let (key, value) = pair.split_once('=').ok_or_else(|| format!("'{pair}' is not key=value"))?;
                Ok((key.trim().to_owned(), value.trim().to_owned()))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let setting = Self { participant, pairs };
        setting.apply(BreakerPolicy::default())?;
        Ok(setting)
    }
}

impl BreakerSetting {
    /// `base` with this setting's values.
    pub fn apply(&self, mut base: BreakerPolicy) -> Result<BreakerPolicy, String> {
        for (key, value) in &self.pairs {
            let duration = || humantime::parse_duration(value).map_err(|e| format!("{key}: {e}"));
            match key.as_str() {
                "failure_rate" => {
                    base.failure_rate = value.parse().map_err(|e| format!("failure_rate: {e}"))?;
                    if !(base.failure_rate > 0.0 && base.failure_rate <= 1.0) {
                        return Err("failure_rate must be in (0, 1]".into());
                    }
                }
                "min_calls" => base.min_calls = value.parse().map_err(|e| format!("min_calls: {e}"))?,
                "window" => base.window = duration()?,
                "cool_down" => base.cool_down = duration()?,
                other => return Err(format!("unknown key '{other}' (failure_rate, min_calls, window, cool_down)")),
            }
        }
        if base.min_calls == 0 || base.window.is_zero() || base.cool_down.is_zero() {
            return Err("min_calls, window and cool_down must be above zero".into());
        }
        if base.window > MAX_SPAN || base.cool_down > MAX_SPAN {
            return Err("window and cool_down must be at most 1 day".into());
        }
        Ok(base)
    }
}

/// The longest window or cool-down.
const MAX_SPAN: Duration = Duration::from_secs(24 * 3600);
/// How much longer than its answer may take a probe is given before another may go.
const PROBE_MARGIN: Duration = Duration::from_secs(1);

/// `span` after `at`, or the end of time.
fn later(at: DateTime<Utc>, span: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(span).ok().and_then(|d| at.checked_add_signed(d)).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Where a participant's circuit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    /// Commands go through.
    Closed,
    /// Commands wait (or fail fast) until the cool-down is over.
    Open,
    /// One probe command is out; its outcome closes or reopens the circuit.
    HalfOpen,
}

impl CircuitState {
    /// The value of the `sagaflow_circuit_state` gauge.
    fn gauge(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::Open => 1.0,
            Self::HalfOpen => 2.0,
        }
    }
}

/// One participant's circuit, as `GET /participants` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ParticipantCircuit {
    pub participant: String,
    pub state: CircuitState,
    /// Outcomes and failures in the current window (while closed).
    pub calls: u32,
    pub failures: u32,
    /// When the circuit entered its state.
    pub since: DateTime<Utc>,
    /// Open: when a probe may go. Half-open: when a lost probe gives way to another.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    /// Sagas waiting for the circuit to close.
    pub held: usize,
    pub failure_rate: f64,
    pub min_calls: u32,
    pub window_ms: u64,
    pub cool_down_ms: u64,
}

#[derive(Debug)]
enum State {
    Closed,
    Open { until: DateTime<Utc> },
    HalfOpen { probe: Uuid, until: DateTime<Utc> },
}

/// The most held sagas remembered per participant for waking; the rest wake at their timer.
const MAX_HELD: usize = 100_000;

#[derive(Debug)]
struct Circuit {
    policy: BreakerPolicy,
    state: State,
    since: DateTime<Utc>,
    /// (when, failed) of the outcomes in the window, oldest first.
    outcomes: VecDeque<(DateTime<Utc>, bool)>,
    held: HashSet<Uuid>,
}

impl Circuit {
    fn new(policy: BreakerPolicy, now: DateTime<Utc>) -> Self {
        Self { policy, state: State::Closed, since: now, outcomes: VecDeque::new(), held: HashSet::new() }
    }

    fn public_state(&self) -> CircuitState {
        match self.state {
            State::Closed => CircuitState::Closed,
            State::Open { .. } => CircuitState::Open,
            State::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    fn set(&mut self, participant: &str, state: State, now: DateTime<Utc>) {
        let from = self.public_state();
        self.state = state;
        self.since = now;
        self.outcomes.clear();
        let to = self.public_state();
        metrics::gauge!("sagaflow_circuit_state", "participant" => participant.to_owned()).set(to.gauge());
        if from != to {
            metrics::counter!("sagaflow_circuit_transitions_total", "participant" => participant.to_owned(),
                "to" => format!("{to:?}"))
            .increment(1);
        }
        match (&self.state, to) {
            (State::Open { until }, _) => {
                tracing::warn!(%participant, ?from, %until, held = self.held.len(), "circuit opened");
            }
            (State::HalfOpen { probe, .. }, _) => {
                tracing::info!(%participant, ?from, %probe, "circuit half-open: probing")
            }
            (State::Closed, _) => tracing::info!(%participant, ?from, held = self.held.len(), "circuit closed"),
        }
    }

    fn hold(&mut self, saga_id: Uuid) {
        if self.held.len() < MAX_HELD {
            self.held.insert(saga_id);
        }
    }
}

/// The circuits of every participant this process sends commands to.
#[derive(Debug, Default)]
pub struct CircuitBreakers {
    defaults: BreakerPolicy,
    overrides: HashMap<String, BreakerPolicy>,
    circuits: Mutex<HashMap<String, Circuit>>,
}

impl CircuitBreakers {
    /// Breakers with `settings` applied over [`BreakerPolicy::default`] (the default setting
    /// first, then each participant's over it).
    pub fn new(settings: &[BreakerSetting]) -> Result<Self, String> {
        let mut defaults = BreakerPolicy::default();
        for setting in settings.iter().filter(|s| s.participant.is_none()) {
            defaults = setting.apply(defaults)?;
        }
        let mut overrides = HashMap::new();
        for setting in settings {
            if let Some(participant) = &setting.participant {
                let base = overrides.get(participant).cloned().unwrap_or_else(|| defaults.clone());
                overrides.insert(participant.clone(), setting.apply(base)?);
            }
        }
        Ok(Self { defaults, overrides, circuits: Mutex::default() })
    }

    fn with_circuit<T>(&self, participant: &str, now: DateTime<Utc>, f: impl FnOnce(&mut Circuit) -> T) -> T {
        let mut circuits = self.circuits.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(circuit) = circuits.get_mut(participant) {
            return f(circuit);
        }
        let circuit = circuits
            .entry(participant.to_owned())
            .or_insert_with(|| Circuit::new(self.overrides.get(participant).unwrap_or(&self.defaults).clone(), now));
        f(circuit)
    }

    /// Records the outcome of saga `saga_id`'s command to `participant`; returns the sagas to
    /// wake when it closed the circuit. While half-open, only the probe's outcome counts.
    pub fn record(&self, participant: &str, saga_id: Uuid, failed: bool, now: DateTime<Utc>) -> Vec<Uuid> {
        self.with_circuit(participant, now, |circuit| match circuit.state {
            State::Closed => {
                circuit.outcomes.push_back((now, failed));
                while circuit.outcomes.front().is_some_and(|(at, _)| later(*at, circuit.policy.window) < now) {
                    circuit.outcomes.pop_front();
                }
                let calls = circuit.outcomes.len();
                let failures = circuit.outcomes.iter().filter(|(_, failed)| *failed).count();
                #[allow(clippy::cast_precision_loss)] // counts far below 2^52
                let rate = failures as f64 / calls as f64;
                if calls >= circuit.policy.min_calls as usize && rate >= circuit.policy.failure_rate {
                    let until = later(now, circuit.policy.cool_down);
                    circuit.set(participant, State::Open { until }, now);
                }
                Vec::new()
            }
            // Outcomes of commands sent before the probe.
            State::HalfOpen { probe, .. } if probe != saga_id => Vec::new(),
            State::HalfOpen { .. } if failed => {
                let until = later(now, circuit.policy.cool_down);
                circuit.set(participant, State::Open { until }, now);
                Vec::new()
            }
            State::HalfOpen { .. } => {
                circuit.set(participant, State::Closed, now);
                circuit.held.drain().collect()
            }
            // Late outcomes of commands sent before it opened.
            State::Open { .. } => Vec::new(),
        })
    }

    /// Every circuit, by participant name.
    pub fn circuits(&self) -> Vec<ParticipantCircuit> {
        let circuits = self.circuits.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<_> = circuits
            .iter()
            .map(|(participant, c)| {
                let failures = c.outcomes.iter().filter(|(_, failed)| *failed).count();
                ParticipantCircuit {
                    participant: participant.clone(),
                    state: c.public_state(),
                    calls: u32::try_from(c.outcomes.len()).unwrap_or(u32::MAX),
                    failures: u32::try_from(failures).unwrap_or(u32::MAX),
                    since: c.since,
                    until: match c.state {
                        State::Closed => None,
                        State::Open { until } | State::HalfOpen { until, .. } => Some(until),
                    },
                    held: c.held.len(),
                    failure_rate: c.policy.failure_rate,
                    min_calls: c.policy.min_calls,
                    window_ms: u64::try_from(c.policy.window.as_millis()).unwrap_or(u64::MAX),
                    cool_down_ms: u64::try_from(c.policy.cool_down.as_millis()).unwrap_or(u64::MAX),
                }
            })
            .collect();
        out.sort_by(|a, b| a.participant.cmp(&b.participant));
        out
    }
}

impl Gate for CircuitBreakers {
    /// A closed circuit admits; an open one whose cool-down is over admits this saga as its
    /// probe (half-open), as does a half-open one whose probe went unanswered for longer than
    /// its patience; otherwise the saga must wait until the returned time.
    fn open_until(
        &self,
        participant: &str,
        saga_id: Uuid,
        patience: Duration,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        self.with_circuit(participant, now, |circuit| {
            let probe_for = |c: &Circuit| later(now, c.policy.cool_down.max(patience.saturating_add(PROBE_MARGIN)));
            match circuit.state {
                State::Closed => None,
                State::HalfOpen { probe, .. } if probe == saga_id => None,
                State::Open { until } | State::HalfOpen { until, .. } if until <= now => {
                    let until = probe_for(circuit);
                    circuit.held.remove(&saga_id);
                    circuit.set(participant, State::HalfOpen { probe: saga_id, until }, now);
                    None
                }
                State::Open { until } | State::HalfOpen { until, .. } => Some(until),
            }
        })
    }

    fn holding(&self, participant: &str, saga_id: Uuid) {
        let mut circuits = self.circuits.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(circuit) = circuits.get_mut(participant) {
            circuit.hold(saga_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_800_000_000_000 + ms).unwrap()
    }

    fn breakers(spec: &str) -> CircuitBreakers {
        CircuitBreakers::new(&[spec.parse().unwrap()]).unwrap()
    }

    const PATIENCE: Duration = Duration::from_millis(500);

    #[test]
    fn failures_past_the_rate_open_the_circuit_and_only_the_probe_closes_it() {
        let b = breakers("p:failure_rate=0.5,min_calls=4,window=10s,cool_down=2s");
        let (a, s, x) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        for (i, failed) in [false, true, false].into_iter().enumerate() {
            assert!(b.record("p", x, failed, at(i as i64)).is_empty());
        }
        assert_eq!(b.open_until("p", a, PATIENCE, at(3)), None, "3 calls are below min_calls");
        b.record("p", x, true, at(4));
        assert_eq!(b.circuits()[0].state, CircuitState::Open);
        assert_eq!(b.open_until("p", a, PATIENCE, at(5)), Some(at(2_004)), "held until the cool-down ends");
        b.holding("p", a);
        assert_eq!(b.open_until("p", s, PATIENCE, at(6)), Some(at(2_004)));
        b.holding("p", s);
        // The cool-down is over: the first saga to ask is the probe, the next one waits for
        // as long as the probe's answer may take (its patience and a margin, or the cool-down).
        assert_eq!(b.open_until("p", s, PATIENCE, at(2_004)), None);
        assert_eq!(b.circuits()[0].state, CircuitState::HalfOpen);
        assert_eq!(b.open_until("p", a, PATIENCE, at(2_005)), Some(at(4_004)));
        assert_eq!(b.open_until("p", s, PATIENCE, at(2_006)), None, "the probe's own retry goes");
        assert!(b.record("p", a, true, at(2_050)).is_empty(), "a command from before the probe decides nothing");
        assert_eq!(b.circuits()[0].state, CircuitState::HalfOpen);
        assert_eq!(b.record("p", s, false, at(2_100)), vec![a], "closing wakes the held sagas, not the probe");
        assert_eq!(b.circuits()[0].state, CircuitState::Closed);
        assert_eq!(b.open_until("p", a, PATIENCE, at(2_101)), None);
    }

    #[test]
    fn a_failed_probe_reopens_and_a_lost_one_gives_way() {
        let b = breakers("min_calls=1,cool_down=1s");
        let (a, s, x) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        b.record("p", x, true, at(0));
        assert_eq!(b.open_until("p", a, PATIENCE, at(1_000)), None, "probe");
        b.record("p", a, true, at(1_100));
        assert_eq!(b.circuits()[0].state, CircuitState::Open);
        assert_eq!(b.open_until("p", a, PATIENCE, at(1_200)), Some(at(2_100)));
        assert_eq!(b.open_until("p", a, Duration::from_secs(5), at(2_100)), None, "second probe");
        assert_eq!(
            b.open_until("p", s, PATIENCE, at(3_000)),
            Some(at(8_100)),
            "a probe gets its patience and a margin"
        );
        assert_eq!(b.open_until("p", s, PATIENCE, at(8_100)), None, "a probe never answered gives way");
        assert!(b.record("p", a, false, at(8_200)).is_empty(), "the lost probe's late answer decides nothing");
        assert_eq!(b.circuits()[0].state, CircuitState::HalfOpen);
        // Outcomes of commands sent before it opened change nothing while open.
        let c = breakers("min_calls=1,cool_down=1s");
        c.record("p", x, true, at(0));
        assert!(c.record("p", x, false, at(1)).is_empty());
        assert_eq!(c.circuits()[0].state, CircuitState::Open);
    }

    #[test]
    fn old_outcomes_leave_the_window_and_successes_keep_it_closed() {
        let b = breakers("min_calls=3,window=1s,failure_rate=0.6");
        let x = Uuid::now_v7();
        b.record("p", x, true, at(0));
        b.record("p", x, true, at(600));
        b.record("p", x, false, at(1_200)); // the first one is out of the window: 1 of 2 failed
        b.record("p", x, false, at(1_300)); // 1 of 3
        assert_eq!(b.circuits()[0].state, CircuitState::Closed);
        b.record("p", x, true, at(1_400)); // 2 of 4
        assert_eq!(b.circuits()[0].state, CircuitState::Closed);
        b.record("p", x, true, at(1_500)); // 3 of 5 = 0.6
        assert_eq!(b.circuits()[0].state, CircuitState::Open);
    }

    #[test]
    fn settings_parse_apply_in_order_and_refuse_nonsense() {
        let b = CircuitBreakers::new(&[
            "cool_down=5s,min_calls=10".parse().unwrap(),
            "payments:window=1m".parse().unwrap(),
        ])
        .unwrap();
        b.record("payments", Uuid::nil(), false, at(0));
        b.record("inventory", Uuid::nil(), false, at(0));
        let circuits = b.circuits();
        assert_eq!(
            (circuits[0].participant.as_str(), circuits[0].min_calls, circuits[0].cool_down_ms),
            ("inventory", 10, 5_000)
        );
        assert_eq!((circuits[1].window_ms, circuits[1].cool_down_ms), (60_000, 5_000));
        for bad in
            ["failure_rate=0", "failure_rate=2", "min_calls=0", "window=soon", "window=2d", "colour=red", "p:cool_down"]
        {
            assert!(bad.parse::<BreakerSetting>().is_err(), "{bad}");
        }
        assert_eq!("p:cool_down=250ms".parse::<BreakerSetting>().unwrap().participant.as_deref(), Some("p"));
    }
}
