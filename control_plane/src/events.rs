//! The control plane's event log: what happened in the cluster ("web-0
//! replaced", "host-b unhealthy: no heartbeat for 15 s"), numbered,
//! stamped and bounded per project, and read back with `listEvents`.
//!
//! `State` stays pure: its methods leave [`EventDraft`]s (what happened,
//! no id, no clock), and the server takes them after each accepted change,
//! numbers and stamps them here, and writes them through to the store.

use std::collections::{BTreeMap, VecDeque};

use commands::model::EventView;
use commands::service::master::EventFilter;

/// The newest events kept per project (worker events count as project "").
pub const EVENTS_PER_PROJECT: usize = 10_000;

/// An event as `State` records it: what, where, no id or time yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventDraft {
    pub kind: &'static str,
    pub project: String,
    pub vm: String,
    pub worker_id: String,
    pub generation: u64,
    pub message: String,
}

/// Events by project, each project's oldest first and at most `bound`.
#[derive(Debug)]
pub struct EventLog {
    by_project: BTreeMap<String, VecDeque<EventView>>,
    next_id: u64,
    bound: usize,
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog::new(EVENTS_PER_PROJECT)
    }
}

impl EventLog {
    /// An empty log keeping the newest `bound` events of each project.
    pub fn new(bound: usize) -> Self {
        EventLog {
            by_project: BTreeMap::new(),
            next_id: 1,
            bound: bound.max(1),
        }
    }

    /// Numbers `draft`, stamps it `at_ms` and keeps it (dropping its
    /// project's oldest event beyond the bound); the stored event.
    pub fn record(&mut self, draft: EventDraft, at_ms: u64) -> EventView {
        let event = EventView {
            id: self.next_id,
            at_ms,
            project: draft.project,
            kind: draft.kind.to_owned(),
            vm: draft.vm,
            worker_id: draft.worker_id,
            generation: draft.generation,
            message: draft.message,
        };
        self.next_id += 1;
        self.keep(event.clone());
        event
    }

    /// Keeps an event read back from the store (ids continue after it).
    pub fn restore(&mut self, event: EventView) {
        self.next_id = self.next_id.max(event.id + 1);
        self.keep(event);
    }

    fn keep(&mut self, event: EventView) {
        let q = self.by_project.entry(event.project.clone()).or_default();
        if q.len() == self.bound {
            q.pop_front();
        }
        q.push_back(event);
    }

    /// The events `filter` admits with an id above `after_id`, oldest
    /// first, at most `limit`.
    pub fn list(&self, filter: &EventFilter, after_id: u64, limit: u32) -> Vec<EventView> {
        let limit = limit as usize;
        let mut out: Vec<EventView> = Vec::new();
        for (project, q) in &self.by_project {
            if filter
                .project
                .as_ref()
                .is_some_and(|p| p.as_str() != project)
            {
                continue;
            }
            // Ids grow within a project: skip what was seen by bisection.
            let start = q.partition_point(|e| e.id <= after_id);
            out.extend(
                q.range(start..)
                    .filter(|e| filter.admits(e))
                    .take(limit)
                    .cloned(),
            );
        }
        out.sort_by_key(|e| e.id);
        out.truncate(limit);
        out
    }

    /// How many events are kept in all.
    pub fn len(&self) -> usize {
        self.by_project.values().map(VecDeque::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use commands::model::event_kind;

    fn draft(project: &str, worker: &str, message: &str) -> EventDraft {
        EventDraft {
            kind: event_kind::VM_PLACED,
            project: project.into(),
            vm: "web-0".into(),
            worker_id: worker.into(),
            generation: 1,
            message: message.into(),
        }
    }

    /// Each project keeps its newest `bound` events; a busy project never
    /// pushes a quiet one's events out.
    #[test]
    fn bounded_per_project() {
        let mut log = EventLog::new(3);
        log.record(draft("quiet", "a", "q1"), 1);
        for i in 0..10 {
            log.record(draft("busy", "a", &format!("b{i}")), 2);
        }
        let all = log.list(&EventFilter::default(), 0, 100);
        let msgs: Vec<&str> = all.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(msgs, ["q1", "b7", "b8", "b9"]);
        assert_eq!(log.len(), 4);
    }

    /// Paging with afterId walks every event once, in id order, across
    /// projects; the filter holds on every page.
    #[test]
    fn pages_in_order_with_filters() {
        let mut log = EventLog::new(100);
        for i in 0..20 {
            let p = if i % 2 == 0 { "a" } else { "b" };
            let w = if i % 3 == 0 { "w1" } else { "w2" };
            log.record(draft(p, w, &i.to_string()), i);
        }
        let mut seen = Vec::new();
        let mut after = 0;
        loop {
            let page = log.list(&EventFilter::default(), after, 6);
            let Some(last) = page.last() else { break };
            after = last.id;
            seen.extend(page.into_iter().map(|e| e.id));
        }
        assert_eq!(seen, (1..=20).collect::<Vec<u64>>());
        let only_a = EventFilter {
            project: Some("a".parse().unwrap()),
            worker: None,
        };
        assert!(log.list(&only_a, 0, 100).iter().all(|e| e.project == "a"));
        assert_eq!(log.list(&only_a, 0, 100).len(), 10);
        let w1 = EventFilter {
            project: None,
            worker: Some("w1".into()),
        };
        assert_eq!(log.list(&w1, 0, 100).len(), 7);
    }

    /// Restored events keep their ids and new ones continue after them.
    #[test]
    fn ids_continue_after_a_restore() {
        let mut log = EventLog::new(10);
        log.restore(EventView {
            id: 41,
            project: "a".into(),
            ..EventView::default()
        });
        assert_eq!(log.record(draft("a", "w", "next"), 5).id, 42);
    }
}
