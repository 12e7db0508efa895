//! Starts and stops the engine's background roles: the coordinator (reply consumer and
//! timeout scanner), the outbox relay, and hosted participants.

use std::sync::Arc;
use std::time::Duration;

use event_store::EventStore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::commit_delivery::CommitDelivery;
use crate::consumer_loop::{run_consumer, MessageHandler, DEFAULT_MAX_IN_FLIGHT};
use crate::coordinator::{Coordinator, ReplyHandler};
use crate::error::Result;
use crate::participant::{CommandHandler, ParticipantRuntime};
use crate::relay::OutboxRelay;
use crate::retention::{run_retention, Retention};
use crate::saga_index_projection::SagaIndexProjection;
use crate::stuck_sagas::StuckWatcher;
use crate::timeouts::run_timeouts;
use crate::transport::{ConsumerStatus, Transport};

/// Which roles to run, and how.
#[derive(Clone)]
pub struct RuntimeConfig {
    /// Run the reply consumer and the timeout scanner.
    pub coordinator: bool,
    /// Run an outbox relay.
    pub relay: bool,
    /// Participants to host, by name.
    pub participants: Vec<(String, Arc<dyn CommandHandler>)>,
    /// Consumer group ids are `<group_prefix>coordinator` and `<group_prefix>participant.<name>`.
    pub group_prefix: String,
    pub timer_poll: Duration,
    /// A stable relay id, for a process that is alone on its store (embedded mode).
    pub relay_id: Option<String>,
    /// How long published outbox rows and deduplication records are kept; `None` keeps
    /// everything.
    pub retention: Option<Retention>,
    /// Messages each consumer handles at once (messages of one saga or aggregate key are
    /// handled in order, one at a time).
    pub max_in_flight: usize,
    /// Keep the saga index and watch it for stuck sagas, with this default stuck threshold;
    /// `None` does neither (any number of processes may; one is enough).
    pub saga_index: Option<Duration>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            coordinator: true,
            relay: true,
            participants: Vec::new(),
            group_prefix: "sagaflow.".to_owned(),
            timer_poll: Duration::from_millis(100),
            relay_id: None,
            retention: Some(Retention::default()),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            saga_index: None,
        }
    }
}

/// The running roles.
pub struct Runtime {
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    consumers: Vec<Arc<ConsumerStatus>>,
}

impl Runtime {
    /// Creates the topics the roles need and starts them.
    pub async fn start(
        store: Arc<dyn EventStore>,
        transport: Arc<dyn Transport>,
        coordinator: Arc<Coordinator>,
        config: RuntimeConfig,
    ) -> Result<Self> {
        let topics = coordinator.topics().clone();
        let mut needed = vec![topics.replies(), topics.dead_letter()];
        needed.extend(config.participants.iter().map(|(name, _)| topics.commands(name)));
        transport.ensure_topics(&needed).await?;

        let cancel = CancellationToken::new();
        let mut tasks = Vec::new();
        let mut consumers = Vec::new();
        if config.coordinator {
            let group = format!("{}coordinator", config.group_prefix);
            let consumer = transport.subscribe(&group, &[topics.replies()]).await?;
            consumers.push(consumer.status());
            let handler: Arc<dyn MessageHandler> = Arc::new(ReplyHandler(Arc::clone(&coordinator)));
            tasks.push(tokio::spawn(run_consumer(group, consumer, handler, config.max_in_flight, cancel.clone())));
            tasks.push(tokio::spawn(run_timeouts(
                Arc::clone(&coordinator),
                Arc::clone(&store),
                config.timer_poll,
                cancel.clone(),
            )));
        }
        for (name, handler) in config.participants {
            let group = format!("{}participant.{name}", config.group_prefix);
            let consumer = transport.subscribe(&group, &[topics.commands(&name)]).await?;
            consumers.push(consumer.status());
            let runtime: Arc<dyn MessageHandler> =
                Arc::new(ParticipantRuntime::new(name, Arc::clone(&store), topics.clone(), handler));
            tasks.push(tokio::spawn(run_consumer(group, consumer, runtime, config.max_in_flight, cancel.clone())));
        }
        // In-process transport and a store that hands its commits over (the embedded mode):
        // deliver straight from the commit instead of relaying.
        let committed = match (config.relay, transport.in_process()) {
            (true, Some(in_process)) => store.committed_outbox().map(|committed| (in_process, committed)),
            _ => None,
        };
        if let Some((in_process, committed)) = committed {
            let relay_id = config.relay_id.clone().unwrap_or_else(|| format!("relay-{}", uuid::Uuid::now_v7()));
            let delivery = CommitDelivery::new(Arc::clone(&store), in_process, committed, relay_id);
            tasks.push(tokio::spawn(delivery.run(cancel.clone())));
        } else if config.relay {
            let mut relay = OutboxRelay::new(Arc::clone(&store), Arc::clone(&transport))
                .with_dead_letter_topic(topics.dead_letter())
                .with_pipeline(transport.relay_pipeline());
            if let Some(id) = config.relay_id {
                relay = relay.with_id(id);
            }
            tasks.push(tokio::spawn(relay.run(cancel.clone())));
        }
        if let Some(stuck_after) = config.saga_index {
            let projection = SagaIndexProjection::new(Arc::clone(&store));
            let watcher = StuckWatcher::new(projection.clone(), stuck_after);
            tasks.push(tokio::spawn(projection.run(cancel.clone())));
            let every = (stuck_after / 4).clamp(Duration::from_secs(1), Duration::from_secs(10));
            tasks.push(tokio::spawn(watcher.run(every, cancel.clone())));
        }
        if let Some(retention) = config.retention {
            tasks.push(tokio::spawn(run_retention(Arc::clone(&store), retention, cancel.clone())));
        }
        Ok(Self { cancel, tasks, consumers })
    }

    /// Where each consumer of the running roles stands in its group.
    pub fn consumers(&self) -> &[Arc<ConsumerStatus>] {
        &self.consumers
    }

    /// Graceful stop: consumers stop between messages, the relay flushes the outbox.
    pub async fn shutdown(self) {
        self.shutdown_within(Duration::from_secs(3600)).await;
    }

    /// Graceful stop that gives up after `budget` (say, with the broker unreachable): tasks
    /// still running then are aborted. Nothing is lost: an effect is durable before its
    /// offset is committed, and what is not yet published stays in the outbox.
    pub async fn shutdown_within(self, budget: Duration) {
        self.cancel.cancel();
        let deadline = tokio::time::Instant::now() + budget;
        for mut task in self.tasks {
            match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::warn!(error = %err, "background task ended abnormally"),
                Err(_) => {
                    tracing::warn!("background task did not stop in time; aborting it");
                    task.abort();
                }
            }
        }
    }

    /// Abrupt stop, as in a crash: tasks are dropped wherever they are.
    pub fn abort(self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
