//! A saga drawn on a time axis (`GET /sagas/{id}/timeline.svg`): one row per step, each
//! attempt a bar coloured by its outcome, retry backoffs as dashed lines, compensations in a
//! second lane, operator actions as markers, and the terminal state in the header.

use chrono::{DateTime, Utc};
use engine::codec::decode;
use engine::saga::{Phase, Resolution, SagaEvent, SagaStatus};
use event_store::RecordedEvent;
use svg::node::element::{Group, Line, Rectangle, Text, Title};
use svg::Document;

/// How an attempt ended, as drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Succeeded,
    Failed,
    TimedOut,
    Compensated,
    CompensationFailed,
    /// No reply (yet): still in flight, or settled by an operator.
    Open,
}

impl Outcome {
    fn class(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::TimedOut => "timed-out",
            Self::Compensated => "compensated",
            Self::CompensationFailed => "compensation-failed",
            Self::Open => "open",
        }
    }

    fn colour(self) -> &'static str {
        match self {
            Self::Succeeded => "#2e7d32",
            Self::Failed => "#c62828",
            Self::TimedOut => "#ef6c00",
            Self::Compensated => "#1565c0",
            Self::CompensationFailed => "#6a1b9a",
            Self::Open => "#9e9e9e",
        }
    }
}

/// One attempt of a step (or of its compensation).
#[derive(Debug, Clone, PartialEq)]
struct Attempt {
    step: usize,
    phase: Phase,
    attempt: u32,
    from: DateTime<Utc>,
    to: Option<DateTime<Utc>>,
    outcome: Outcome,
    detail: String,
}

/// A wait between attempts.
#[derive(Debug, Clone, PartialEq)]
struct Backoff {
    step: usize,
    phase: Phase,
    from: DateTime<Utc>,
    to: Option<DateTime<Utc>>,
}

/// An operator's action.
#[derive(Debug, Clone, PartialEq)]
struct Marker {
    at: DateTime<Utc>,
    label: String,
}

/// What the picture shows, read from the saga's events.
#[derive(Debug, Default)]
struct Timeline {
    name: String,
    steps: Vec<String>,
    start: Option<DateTime<Utc>>,
    end: Option<DateTime<Utc>>,
    attempts: Vec<Attempt>,
    backoffs: Vec<Backoff>,
    markers: Vec<Marker>,
    terminal: Option<(SagaStatus, Option<String>)>,
}

impl Timeline {
    fn read(events: &[RecordedEvent]) -> engine::Result<Self> {
        let mut t = Self::default();
        for recorded in events {
            let at = recorded.recorded_at;
            t.start.get_or_insert(at);
            t.end = Some(at);
            t.apply(at, decode::<SagaEvent>(recorded)?);
        }
        Ok(t)
    }

    fn index(&self, step: &str) -> usize {
        self.steps.iter().position(|s| s == step).unwrap_or(0)
    }

    fn open(&mut self, at: DateTime<Utc>, step: &str, phase: Phase, attempt: u32) {
        let step = self.index(step);
        if let Some(b) = self.backoffs.iter_mut().rev().find(|b| b.step == step && b.phase == phase) {
            b.to.get_or_insert(at);
        }
        let detail = String::new();
        self.attempts.push(Attempt { step, phase, attempt, from: at, to: None, outcome: Outcome::Open, detail });
    }

    fn close(&mut self, at: DateTime<Utc>, step: &str, phase: Phase, outcome: Outcome, detail: String) {
        let step = self.index(step);
        let open = self.attempts.iter_mut().rev().find(|a| a.step == step && a.phase == phase && a.to.is_none());
        if let Some(a) = open {
            a.to = Some(at);
            a.outcome = outcome;
            a.detail = detail;
        }
    }

    fn apply(&mut self, at: DateTime<Utc>, event: SagaEvent) {
        use SagaEvent as E;
        match event {
            E::SagaStarted { definition, .. } => {
                self.name = format!("{} v{}", definition.name, definition.version);
                self.steps = definition.steps.into_iter().map(|s| s.name).collect();
            }
            E::StepCommandSent { step, attempt, .. } => self.open(at, &step, Phase::Forward, attempt),
            E::CompensationSent { step, attempt, .. } => self.open(at, &step, Phase::Compensation, attempt),
            E::StepSucceeded { step, .. } => self.close(at, &step, Phase::Forward, Outcome::Succeeded, String::new()),
            E::StepFailed { step, reason, .. } => self.close(at, &step, Phase::Forward, Outcome::Failed, reason),
            E::StepTimedOut { step, .. } => {
                self.close(at, &step, Phase::Forward, Outcome::TimedOut, "no reply in time".into());
            }
            E::StepCompensated { step, .. } => {
                self.close(at, &step, Phase::Compensation, Outcome::Compensated, String::new());
            }
            E::CompensationFailed { step, reason, .. } => {
                self.close(at, &step, Phase::Compensation, Outcome::CompensationFailed, reason);
            }
            // A held attempt waits as a retry's backoff does.
            E::StepRetryScheduled { step, phase, .. } | E::StepHeld { step, phase, .. } => {
                let step = self.index(&step);
                self.backoffs.push(Backoff { step, phase, from: at, to: None });
            }
            E::OperatorRetried { step, actor, reason, .. } => {
                self.mark(at, format!("{actor} retried {step}: {reason}"))
            }
            E::OperatorResolved { step, outcome, actor, reason, .. } => {
                let settled = format!("settled by {actor}");
                self.close(at, &step, Phase::Forward, Outcome::Open, settled.clone());
                self.close(at, &step, Phase::Compensation, Outcome::Open, settled);
                let outcome = match outcome {
                    Resolution::Succeeded => "succeeded",
                    Resolution::Compensated => "compensated",
                };
                self.mark(at, format!("{actor} resolved {step} as {outcome}: {reason}"));
            }
            E::OperatorAborted { step, actor, reason } => {
                self.close(at, &step, Phase::Forward, Outcome::Open, format!("abandoned: aborted by {actor}"));
                self.mark(at, format!("{actor} aborted at {step}: {reason}"));
            }
            E::SagaCompleted {} => self.terminal = Some((SagaStatus::Completed, None)),
            E::SagaCompensated { reason } => self.terminal = Some((SagaStatus::Compensated, Some(reason))),
            E::SagaFailed { reason } => self.terminal = Some((SagaStatus::Failed, Some(reason))),
            E::CompensationStarted { .. } | E::ReplyIgnored { .. } => {}
        }
    }

    /// An operator's action; it reopens a saga that had ended.
    fn mark(&mut self, at: DateTime<Utc>, label: String) {
        self.markers.push(Marker { at, label });
        self.terminal = None;
    }
}

const WIDTH: f64 = 960.0;
const LABELS: f64 = 170.0;
const CHART: f64 = WIDTH - LABELS - 30.0;
const HEADER: f64 = 56.0;
const ROW: f64 = 40.0;

/// Characters XML 1.0 cannot carry are shown as spaces; long texts are cut.
fn clean(text: &str, max: usize) -> String {
    let mut out: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).take(max).collect();
    if text.chars().count() > max {
        out.push('…');
    }
    out
}

fn millis(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_microseconds().map_or(0.0, |us| us as f64 / 1_000.0)
}

fn duration_label(ms: f64) -> String {
    if ms < 1_000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.2} s", ms / 1_000.0)
    }
}

fn text(x: f64, y: f64, content: String) -> Text {
    Text::new(content).set("x", x).set("y", y).set("font-family", "sans-serif").set("font-size", 12)
}

/// The saga of `events` (its stream, in order) as an SVG document.
pub fn render(events: &[RecordedEvent]) -> engine::Result<String> {
    let t = Timeline::read(events)?;
    let (Some(start), Some(end)) = (t.start, t.end) else { return Ok(Document::new().to_string()) };
    let span = millis(start, end).max(1.0);
    let x = |at: DateTime<Utc>| LABELS + millis(start, at) / span * CHART;
    // Below the rows: the axis, the legend, then one line per operator action.
    let bottom = HEADER + ROW * t.steps.len() as f64 + 6.0;
    let height = bottom + 50.0 + 16.0 * t.markers.len() as f64;
    let mut doc = Document::new()
        .set("xmlns", "http://www.w3.org/2000/svg")
        .set("width", WIDTH)
        .set("height", height)
        .set("viewBox", (0, 0, WIDTH, height))
        .add(Rectangle::new().set("width", WIDTH).set("height", height).set("fill", "white"));

    let (status, reason) = match &t.terminal {
        Some((status, reason)) => (format!("{status:?}").to_uppercase(), reason.clone()),
        None => ("RUNNING".to_owned(), None),
    };
    let title = format!("{} · {status} after {}", t.name, duration_label(span));
    doc = doc.add(text(10.0, 20.0, clean(&title, 120)).set("font-size", 15).set("font-weight", "bold"));
    if let Some(reason) = reason {
        doc = doc.add(text(10.0, 38.0, clean(&reason, 140)).set("fill", "#555"));
    }
    // Time axis: five ticks.
    for i in 0..=4 {
        let at = LABELS + CHART * f64::from(i) / 4.0;
        let label = duration_label(span * f64::from(i) / 4.0);
        doc = doc
            .add(
                Line::new()
                    .set("x1", at)
                    .set("x2", at)
                    .set("y1", HEADER - 6.0)
                    .set("y2", bottom)
                    .set("stroke", "#e0e0e0"),
            )
            .add(text(at - 12.0, bottom + 14.0, label).set("fill", "#777").set("font-size", 11));
    }
    for (row, name) in t.steps.iter().enumerate() {
        let y = HEADER + ROW * row as f64;
        doc = doc.add(text(10.0, y + 20.0, clean(name, 24)));
    }
    for b in &t.backoffs {
        let y = HEADER + ROW * b.step as f64 + if b.phase == Phase::Forward { 12.0 } else { 30.0 };
        let line = Line::new()
            .set("class", "backoff")
            .set("x1", x(b.from))
            .set("x2", x(b.to.unwrap_or(end)))
            .set("y1", y)
            .set("y2", y)
            .set("stroke", "#757575")
            .set("stroke-dasharray", "4 3")
            .add(Title::new(format!("backoff {}", duration_label(millis(b.from, b.to.unwrap_or(end))))));
        doc = doc.add(line);
    }
    for a in &t.attempts {
        let to = a.to.unwrap_or(end);
        let (top, tall) = if a.phase == Phase::Forward { (4.0, 16.0) } else { (24.0, 12.0) };
        let what = if a.phase == Phase::Forward { "attempt" } else { "compensation attempt" };
        let mut tip = format!(
            "{} {what} {}: {} after {}",
            t.steps[a.step],
            a.attempt,
            a.outcome.class(),
            duration_label(millis(a.from, to))
        );
        if !a.detail.is_empty() {
            tip.push_str(&format!(" ({})", clean(&a.detail, 200)));
        }
        let bar = Rectangle::new()
            .set("class", format!("attempt {}", a.outcome.class()))
            .set("x", x(a.from))
            .set("y", HEADER + ROW * a.step as f64 + top)
            .set("width", (x(to) - x(a.from)).max(3.0))
            .set("height", tall)
            .set("rx", 2)
            .set("fill", a.outcome.colour())
            .add(Title::new(tip));
        doc = doc.add(bar);
    }
    for (n, m) in t.markers.iter().enumerate() {
        // A numbered line at its time; its words in the list below the legend.
        let at = x(m.at);
        let number = (n + 1).to_string();
        let line = Line::new().set("x1", at).set("x2", at).set("y1", HEADER - 10.0).set("y2", bottom);
        let note = format!("{number}. {}", clean(&m.label, 140));
        let marker = Group::new()
            .set("class", "operator")
            .add(line.set("stroke", "black").set("stroke-width", 2))
            .add(Title::new(clean(&m.label, 300)))
            .add(text(at + 3.0, HEADER - 12.0, number).set("font-size", 11).set("font-weight", "bold"))
            .add(text(LABELS, bottom + 56.0 + 16.0 * n as f64, note).set("font-size", 11));
        doc = doc.add(marker);
    }
    let legend = [
        Outcome::Succeeded,
        Outcome::Failed,
        Outcome::TimedOut,
        Outcome::Compensated,
        Outcome::CompensationFailed,
        Outcome::Open,
    ];
    for (i, outcome) in legend.iter().enumerate() {
        let lx = LABELS + 125.0 * i as f64;
        doc = doc
            .add(
                Rectangle::new()
                    .set("x", lx)
                    .set("y", bottom + 26.0)
                    .set("width", 12)
                    .set("height", 10)
                    .set("fill", outcome.colour()),
            )
            .add(text(lx + 16.0, bottom + 35.0, outcome.class().replace('-', " ")).set("font-size", 11));
    }
    Ok(doc.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::codec::encode;
    use engine::definition::{RetryPolicy, SagaDefinition, StepDefinition};
    use uuid::Uuid;

    fn recorded(events: Vec<(i64, SagaEvent)>) -> Vec<RecordedEvent> {
        let t0 = DateTime::parse_from_rfc3339("2026-12-01T10:00:00Z").unwrap().with_timezone(&Utc);
        events
            .into_iter()
            .enumerate()
            .map(|(i, (ms, event))| {
                let new = encode(&event).unwrap();
                RecordedEvent {
                    event_id: new.event_id,
                    stream_id: "saga-x".into(),
                    version: i as u64 + 1,
                    global_position: i as u64 + 1,
                    transaction_id: i as u64 + 1,
                    event_type: new.event_type,
                    data: new.data,
                    metadata: new.metadata,
                    recorded_at: t0 + chrono::Duration::milliseconds(ms),
                }
            })
            .collect()
    }

    fn step(name: &str, compensation: Option<&str>) -> StepDefinition {
        StepDefinition {
            name: name.into(),
            participant: "p".into(),
            command: "Do".into(),
            compensation: compensation.map(Into::into),
            timeout_ms: 100,
            retry: RetryPolicy::default(),
        }
    }

    #[test]
    fn each_attempt_is_a_bar_by_outcome_with_backoffs_compensations_and_operators() {
        use SagaEvent as E;
        let definition = SagaDefinition {
            stuck_after_ms: None,
            on_open_circuit: Default::default(),
            name: "ship <&> go".into(),
            version: 2,
            steps: vec![step("reserve", Some("Undo")), step("ship", None)],
        };
        let sent = |step: &str, attempt| E::StepCommandSent {
            step: step.into(),
            attempt,
            message_id: format!("{step}/{attempt}"),
            deadline: Utc::now(),
        };
        let svg = render(&recorded(vec![
            (0, E::SagaStarted { saga_id: Uuid::nil(), definition, input: serde_json::json!({}) }),
            (0, sent("reserve", 1)),
            (
                10,
                E::StepSucceeded {
                    step: "reserve".into(),
                    attempt: 1,
                    reply_id: "r".into(),
                    output: serde_json::json!({}),
                },
            ),
            (10, sent("ship", 1)),
            (30, E::StepFailed { step: "ship".into(), attempt: 1, reason: "busy\u{7}".into(), retryable: true }),
            (30, E::StepRetryScheduled { step: "ship".into(), phase: Phase::Forward, next_attempt: 2, at: Utc::now() }),
            (230, sent("ship", 2)),
            (330, E::StepTimedOut { step: "ship".into(), attempt: 2, message_id: "ship/2".into() }),
            (330, E::SagaFailed { reason: "pivot step 'ship' timed out".into() }),
            (
                900,
                E::OperatorResolved {
                    step: "ship".into(),
                    outcome: Resolution::Compensated,
                    output: serde_json::Value::Null,
                    actor: "ops".into(),
                    reason: "never left".into(),
                },
            ),
            (900, E::CompensationStarted { failed_step: "ship".into(), reason: "resolved".into() }),
            (
                900,
                E::CompensationSent {
                    step: "reserve".into(),
                    attempt: 1,
                    message_id: "u".into(),
                    deadline: Utc::now(),
                },
            ),
            (950, E::StepCompensated { step: "reserve".into(), attempt: 1, reply_id: "u/r".into() }),
            (950, E::SagaCompensated { reason: "resolved".into() }),
        ]))
        .unwrap();
        let count = |needle: &str| svg.matches(needle).count();
        assert_eq!(count(r#"class="attempt succeeded""#), 1, "{svg}");
        assert_eq!(count(r#"class="attempt failed""#), 1);
        assert_eq!(count(r#"class="attempt timed-out""#), 1);
        assert_eq!(count(r#"class="attempt compensated""#), 1);
        assert_eq!(count(r#"class="backoff""#), 1);
        assert_eq!(count(r#"class="operator""#), 1);
        assert!(svg.contains("ship &lt;&amp;&gt; go v2 · COMPENSATED after 950 ms"), "{svg}");
        assert!(svg.contains("ops resolved ship as compensated: never left"));
        assert!(svg.contains("ship attempt 1: failed after 20 ms (busy )"), "control characters are not XML: {svg}");
        assert!(!svg.contains('\u{7}'));
    }
}
