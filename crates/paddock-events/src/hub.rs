//! The hub that delivers events, and the emitters that send them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::SystemTime;

use tokio::sync::broadcast;

use crate::event::{Event, EventKind, LeaseId, Source};

/// Receives every event of a hub, on the emitting thread, in emission
/// order per emitting thread.
///
/// It must return quickly and never block: it runs inside the pool's and
/// the agent client's work (an atomic counter, a short lock, a push onto a
/// bounded queue). An event it emits itself (an alert) is delivered to every
/// subscriber, itself included, before its own call returns; a subscriber
/// that reacts to its own kind of event must ignore it.
pub trait Subscriber: Send + Sync + 'static {
    /// Called for each event.
    fn on_event(&self, event: &Event);
}

/// How many events [`EventHub::stream`] receivers may fall behind before
/// they lose the oldest (and learn how many through `RecvError::Lagged`).
const STREAM_CAPACITY: usize = 4096;

struct HubInner {
    subscribers: RwLock<Vec<Arc<dyn Subscriber>>>,
    next_id: AtomicU64,
    stream: broadcast::Sender<Arc<Event>>,
}

/// Delivers events to subscribers. Cheap to clone; every clone is the same
/// hub.
#[derive(Clone)]
pub struct EventHub {
    inner: Arc<HubInner>,
}

impl std::fmt::Debug for EventHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventHub")
            .field("subscribers", &self.subscribers())
            .field("emitted", &self.inner.next_id.load(Ordering::Relaxed))
            .finish()
    }
}

impl Default for EventHub {
    fn default() -> Self {
        Self::new()
    }
}

impl EventHub {
    /// A hub with no subscribers.
    #[must_use]
    pub fn new() -> Self {
        let (stream, _) = broadcast::channel(STREAM_CAPACITY);
        Self {
            inner: Arc::new(HubInner {
                subscribers: RwLock::new(Vec::new()),
                next_id: AtomicU64::new(0),
                stream,
            }),
        }
    }

    /// Adds a subscriber; it sees events emitted from now on.
    pub fn subscribe(&self, subscriber: Arc<dyn Subscriber>) {
        self.inner
            .subscribers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(subscriber);
    }

    /// Removes a subscriber added with [`EventHub::subscribe`] (the same
    /// `Arc`); it sees no event emitted after this returns.
    pub fn unsubscribe(&self, subscriber: &Arc<dyn Subscriber>) {
        self.inner
            .subscribers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|s| !Arc::ptr_eq(s, subscriber));
    }

    /// An async receiver of every event from now on. It may lag: a receiver
    /// more than 4096 events behind loses the oldest and is told how many
    /// (`RecvError::Lagged`). Use a [`Subscriber`] for what must see every
    /// event.
    #[must_use]
    pub fn stream(&self) -> broadcast::Receiver<Arc<Event>> {
        self.inner.stream.subscribe()
    }

    /// How many subscribers the hub has (stream receivers not counted).
    #[must_use]
    pub fn subscribers(&self) -> usize {
        self.inner
            .subscribers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// An emitter for events from `source`.
    #[must_use]
    pub fn emitter(&self, source: Source) -> Emitter {
        Emitter {
            hub: Some(self.clone()),
            source: Arc::new(RwLock::new(source)),
        }
    }

    /// Delivers an event to every subscriber and stream receiver.
    pub fn emit(&self, source: Source, kind: EventKind) {
        let event = Event {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            at: SystemTime::now(),
            source,
            kind,
        };
        // Cloned out of the lock, so that a subscriber may emit (an alert)
        // or subscribe without deadlocking.
        let subscribers = self
            .inner
            .subscribers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for subscriber in &subscribers {
            subscriber.on_event(&event);
        }
        if self.inner.stream.receiver_count() > 0 {
            // No receiver left is not an error here.
            let _ = self.inner.stream.send(Arc::new(event));
        }
    }
}

/// Sends events from one source: a pool, a slot, a sandbox. Cheap to
/// clone; clones share the source, so setting the lease on one sets it on
/// all (the pool sets it on a slot's emitter, the slot's agent client
/// emits with it). The default emitter is disabled: it sends nothing and
/// costs a branch.
#[derive(Clone, Default)]
pub struct Emitter {
    hub: Option<EventHub>,
    source: Arc<RwLock<Source>>,
}

impl std::fmt::Debug for Emitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emitter")
            .field("enabled", &self.hub.is_some())
            .field("source", &self.source())
            .finish()
    }
}

impl Emitter {
    /// An emitter that sends nothing.
    #[must_use]
    pub fn disabled() -> Self {
        Self::default()
    }

    /// Whether events sent here go anywhere.
    #[must_use]
    pub fn is_enabled(&self) -> bool {
        self.hub.is_some()
    }

    /// The hub, if enabled.
    #[must_use]
    pub fn hub(&self) -> Option<&EventHub> {
        self.hub.as_ref()
    }

    /// The source events carry now.
    #[must_use]
    pub fn source(&self) -> Source {
        self.source
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A new emitter (with a source of its own) for slot `slot` of this
    /// emitter's pool, with its domain if it has one.
    #[must_use]
    pub fn for_slot(&self, slot: u32, domain: Option<&str>) -> Self {
        let mut source = self.source();
        source.slot = Some(slot);
        source.domain = domain.map(Into::into);
        source.lease = None;
        source.tenant = None;
        Self {
            hub: self.hub.clone(),
            source: Arc::new(RwLock::new(source)),
        }
    }

    /// Sets (or clears) the lease and tenant that later events carry.
    pub fn set_lease(&self, lease: Option<(LeaseId, Option<Arc<str>>)>) {
        let mut source = self.source.write().unwrap_or_else(PoisonError::into_inner);
        match lease {
            Some((id, tenant)) => {
                source.lease = Some(id);
                source.tenant = tenant;
            }
            None => {
                source.lease = None;
                source.tenant = None;
            }
        }
    }

    /// Emits the event `kind` makes; `kind` is not called when the emitter
    /// is disabled.
    pub fn emit(&self, kind: impl FnOnce() -> EventKind) {
        if let Some(hub) = &self.hub {
            hub.emit(self.source(), kind());
        }
    }

    /// Emits with `source` changed by `edit` for this event only (an
    /// acquire that knows its lease before the slot's emitter does).
    pub fn emit_from(&self, edit: impl FnOnce(&mut Source), kind: impl FnOnce() -> EventKind) {
        if let Some(hub) = &self.hub {
            let mut source = self.source();
            edit(&mut source);
            hub.emit(source, kind());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<Event>>);

    impl Subscriber for Recorder {
        fn on_event(&self, event: &Event) {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(event.clone());
        }
    }

    fn recorded(recorder: &Recorder) -> Vec<Event> {
        recorder
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    #[test]
    fn subscribers_see_every_event_in_order_with_its_source() {
        let hub = EventHub::new();
        let recorder = Arc::new(Recorder::default());
        hub.subscribe(recorder.clone());
        let pool = hub.emitter(Source {
            pool: Some("ci".into()),
            ..Source::default()
        });
        let slot = pool.for_slot(3, Some("paddock-ci-3"));
        slot.set_lease(Some((LeaseId(9), Some("alice".into()))));
        pool.emit(|| EventKind::SlotCreated {
            duration: Duration::from_millis(5),
        });
        slot.emit(|| EventKind::AgentRoundTrip {
            duration: Duration::from_millis(1),
        });
        slot.set_lease(None);
        slot.emit(|| EventKind::ProtocolError { kind: "crc" });
        let events = recorded(&recorder);
        assert_eq!(events.len(), 3);
        assert_eq!(
            events.iter().map(|e| e.id).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        assert_eq!(events[0].source.slot, None);
        assert_eq!(events[1].source.slot, Some(3));
        assert_eq!(events[1].source.lease, Some(LeaseId(9)));
        assert_eq!(events[1].source.tenant.as_deref(), Some("alice"));
        assert_eq!(events[1].source.pool.as_deref(), Some("ci"));
        assert_eq!(events[2].source.lease, None);
        assert_eq!(events[2].kind.name(), "protocol_error");
    }

    #[test]
    fn a_disabled_emitter_never_builds_its_event() {
        let emitter = Emitter::disabled();
        assert!(!emitter.is_enabled());
        emitter.emit(|| unreachable!("a disabled emitter builds nothing"));
    }

    struct Echo(EventHub, Arc<Recorder>);

    impl Subscriber for Echo {
        fn on_event(&self, event: &Event) {
            if !matches!(event.kind, EventKind::Alert { .. }) {
                self.0.emit(
                    event.source.clone(),
                    EventKind::Alert {
                        rule: "echo",
                        action: "log",
                        value: 1.0,
                        threshold: 1.0,
                        message: String::new(),
                    },
                );
            }
            self.1.on_event(event);
        }
    }

    #[test]
    fn a_subscriber_may_emit_without_deadlocking() {
        let hub = EventHub::new();
        let recorder = Arc::new(Recorder::default());
        hub.subscribe(Arc::new(Echo(hub.clone(), recorder.clone())));
        hub.emit(Source::default(), EventKind::ProtocolError { kind: "crc" });
        let names: Vec<_> = recorded(&recorder).iter().map(|e| e.kind.name()).collect();
        assert_eq!(names, vec!["alert", "protocol_error"]);
    }

    #[tokio::test]
    async fn streams_receive_events_and_say_when_they_lag() {
        let hub = EventHub::new();
        let mut stream = hub.stream();
        hub.emit(Source::default(), EventKind::ProtocolError { kind: "crc" });
        let event = stream.recv().await.expect("an event");
        assert_eq!(event.kind.name(), "protocol_error");
        for _ in 0..(STREAM_CAPACITY + 10) {
            hub.emit(Source::default(), EventKind::ProtocolError { kind: "crc" });
        }
        match stream.recv().await {
            Err(broadcast::error::RecvError::Lagged(lost)) => assert_eq!(lost, 10),
            other => panic!("expected a lag, got {other:?}"),
        }
    }
}
