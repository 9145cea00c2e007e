//! The bandwidth model: piece transfers as fluid flows sharing host links fairly.
//!
//! Every host has an uplink and a downlink capacity (bytes/s). A flow (one piece on its own
//! stream) from `s` to `r` runs at
//!
//! ```text
//! rate = min(up(s) / uploads(s), down(r) / downloads(r))
//! ```
//!
//! i.e. each host splits its uplink equally among its active uploads and its downlink among
//! its active downloads, and a flow gets the smaller of its two shares. Rates are
//! recomputed whenever a flow starts or ends at either endpoint (only flows that share a
//! host with the changed flow can change). This is one round of progressive filling, not
//! full max-min fairness: capacity a flow cannot use because its other end is the
//! bottleneck is not handed to the host's other flows, so links are slightly
//! under-used when shares are uneven (the model errs on the slow side).
//!
//! Completions are events at `now + remaining / rate`. When a rate change brings a flow's
//! end earlier, its generation is bumped and a new completion is scheduled (the stale one
//! is ignored when it pops: lazy invalidation). When it pushes the end later, the
//! scheduled completion stays: it pops early, finds bytes left, and reschedules. Slower
//! flows are the common case under contention, so this keeps the event heap small.

use kraken_storage::PieceIndex;

/// Virtual time in nanoseconds since the start of the run.
pub type Nanos = u64;

/// Nanoseconds per second.
pub const NANOS_PER_SEC: f64 = 1e9;

/// A flow's slot in the [`Network`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlowId(pub u32);

/// One piece in transit.
#[derive(Debug, Clone)]
pub struct Flow {
    /// Sending host.
    pub from: u32,
    /// Receiving host.
    pub to: u32,
    /// The piece.
    pub index: PieceIndex,
    /// Its size in bytes.
    pub size: u32,
    /// The receiver will find it corrupt.
    pub corrupt: bool,
    /// Bytes still to move, as of `updated`.
    pub remaining: f64,
    /// Current rate, bytes/s.
    pub rate: f64,
    updated: Nanos,
    generation: u64,
    /// When the live completion event for this generation fires (0: none yet).
    scheduled_at: Nanos,
}

impl Flow {
    /// Bytes moved so far (as of its last update).
    pub fn moved(&self) -> f64 {
        f64::from(self.size) - self.remaining
    }
}

/// A (re)scheduled flow completion: valid only while the flow's generation matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// When it will finish at the current rate.
    pub at: Nanos,
    /// Which flow.
    pub flow: FlowId,
    /// Its generation when scheduled.
    pub generation: u64,
}

#[derive(Debug, Clone)]
struct Link {
    up: f64,
    down: f64,
    uploads: Vec<FlowId>,
    downloads: Vec<FlowId>,
}

/// Hosts' links and the flows on them.
#[derive(Debug, Default)]
pub struct Network {
    links: Vec<Link>,
    flows: Vec<Option<Flow>>,
    free: Vec<u32>,
    next_generation: u64,
    scratch: Vec<FlowId>,
    completions: Vec<Completion>,
}

impl Network {
    /// An empty network.
    pub fn new() -> Self {
        Network::default()
    }

    /// Adds a host with these capacities (bytes/s); returns its index.
    pub fn add_host(&mut self, up: f64, down: f64) -> u32 {
        self.links.push(Link {
            up,
            down,
            uploads: Vec::new(),
            downloads: Vec::new(),
        });
        (self.links.len() - 1) as u32
    }

    /// Active uploads of `host`.
    pub fn uploads(&self, host: u32) -> usize {
        self.links[host as usize].uploads.len()
    }

    /// Active downloads of `host`.
    pub fn downloads(&self, host: u32) -> usize {
        self.links[host as usize].downloads.len()
    }

    /// The flow in `id`, if live.
    pub fn flow(&self, id: FlowId) -> Option<&Flow> {
        self.flows.get(id.0 as usize).and_then(Option::as_ref)
    }

    /// Completions (re)scheduled since the last call; the caller puts them on its heap.
    pub fn take_completions(&mut self) -> impl Iterator<Item = Completion> + '_ {
        self.completions.drain(..)
    }

    /// Starts a piece transfer at `now`.
    pub fn start(
        &mut self,
        now: Nanos,
        from: u32,
        to: u32,
        index: PieceIndex,
        size: u32,
        corrupt: bool,
    ) -> FlowId {
        let flow = Flow {
            from,
            to,
            index,
            size,
            corrupt,
            remaining: f64::from(size),
            rate: 0.0,
            updated: now,
            generation: 0,
            scheduled_at: 0,
        };
        let id = match self.free.pop() {
            Some(slot) => {
                self.flows[slot as usize] = Some(flow);
                FlowId(slot)
            }
            None => {
                self.flows.push(Some(flow));
                FlowId((self.flows.len() - 1) as u32)
            }
        };
        self.links[from as usize].uploads.push(id);
        self.links[to as usize].downloads.push(id);
        self.reshare(now, from, to);
        id
    }

    /// A completion popped: returns the finished flow if `c` is still current.
    pub fn complete(&mut self, now: Nanos, c: Completion) -> Option<Flow> {
        let current = self
            .flow(c.flow)
            .is_some_and(|f| f.generation == c.generation);
        if !current {
            return None;
        }
        self.settle(now, c.flow);
        // Popped early (the flow slowed after this was scheduled): reschedule.
        if self.flow(c.flow).is_some_and(|f| f.remaining >= 1.0) {
            self.schedule(now, c.flow);
            return None;
        }
        let mut f = self.remove(c.flow)?;
        f.remaining = 0.0;
        self.reshare(now, f.from, f.to);
        Some(f)
    }

    /// Ends every flow from `a` to `b` and from `b` to `a`; returns them (partly moved).
    pub fn abort_between(&mut self, now: Nanos, a: u32, b: u32) -> Vec<Flow> {
        let ids: Vec<FlowId> = self.links[a as usize]
            .uploads
            .iter()
            .chain(&self.links[a as usize].downloads)
            .copied()
            .filter(|id| self.flow(*id).is_some_and(|f| f.from == b || f.to == b))
            .collect();
        self.abort(now, ids)
    }

    /// Ends every flow to or from `host`; returns them (partly moved).
    pub fn abort_host(&mut self, now: Nanos, host: u32) -> Vec<Flow> {
        let link = &self.links[host as usize];
        let ids: Vec<FlowId> = link
            .uploads
            .iter()
            .chain(&link.downloads)
            .copied()
            .collect();
        self.abort(now, ids)
    }

    fn abort(&mut self, now: Nanos, ids: Vec<FlowId>) -> Vec<Flow> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            self.settle(now, id);
            if let Some(f) = self.remove(id) {
                self.reshare(now, f.from, f.to);
                out.push(f);
            }
        }
        out
    }

    fn remove(&mut self, id: FlowId) -> Option<Flow> {
        let f = self.flows.get_mut(id.0 as usize)?.take()?;
        self.free.push(id.0);
        let up = &mut self.links[f.from as usize].uploads;
        if let Some(pos) = up.iter().position(|x| *x == id) {
            up.swap_remove(pos);
        }
        let down = &mut self.links[f.to as usize].downloads;
        if let Some(pos) = down.iter().position(|x| *x == id) {
            down.swap_remove(pos);
        }
        Some(f)
    }

    fn settle(&mut self, now: Nanos, id: FlowId) {
        if let Some(f) = self.flows[id.0 as usize].as_mut() {
            let dt = now.saturating_sub(f.updated) as f64 / NANOS_PER_SEC;
            f.remaining = (f.remaining - f.rate * dt).max(0.0);
            f.updated = now;
        }
    }

    /// Recomputes the rates of every flow on `sender`'s uplink and `receiver`'s downlink.
    fn reshare(&mut self, now: Nanos, sender: u32, receiver: u32) {
        let mut ids = std::mem::take(&mut self.scratch);
        ids.clear();
        ids.extend_from_slice(&self.links[sender as usize].uploads);
        ids.extend_from_slice(&self.links[receiver as usize].downloads);
        for id in &ids {
            self.update(now, *id);
        }
        self.scratch = ids;
    }

    fn update(&mut self, now: Nanos, id: FlowId) {
        let Some(f) = self.flows[id.0 as usize].as_ref() else {
            return;
        };
        let s = &self.links[f.from as usize];
        let r = &self.links[f.to as usize];
        let rate = (s.up / s.uploads.len() as f64).min(r.down / r.downloads.len() as f64);
        if rate == f.rate {
            return;
        }
        self.settle(now, id);
        let Some(f) = self.flows[id.0 as usize].as_mut() else {
            return;
        };
        f.rate = rate;
        let at = finish_time(now, f);
        // A later end is caught when the scheduled completion pops early.
        if f.scheduled_at == 0 || at < f.scheduled_at {
            self.schedule(now, id);
        }
    }

    /// Schedules a completion for `id` at its current rate, superseding any earlier one.
    fn schedule(&mut self, now: Nanos, id: FlowId) {
        self.next_generation += 1;
        let generation = self.next_generation;
        let Some(f) = self.flows[id.0 as usize].as_mut() else {
            return;
        };
        let at = finish_time(now, f);
        f.generation = generation;
        f.scheduled_at = at;
        self.completions.push(Completion {
            at,
            flow: id,
            generation,
        });
    }
}

/// When `f` finishes at its current rate (rounded up to whole nanoseconds).
fn finish_time(now: Nanos, f: &Flow) -> Nanos {
    let secs = f.remaining / f.rate;
    now + (secs * NANOS_PER_SEC).ceil() as Nanos
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: f64 = 1e6;

    fn run_to_end(net: &mut Network) -> Vec<(Nanos, u32)> {
        let mut heap: Vec<Completion> = net.take_completions().collect();
        let mut done = Vec::new();
        while !heap.is_empty() {
            heap.sort_by_key(|c| std::cmp::Reverse((c.at, c.generation)));
            let c = heap.pop().unwrap();
            if let Some(f) = net.complete(c.at, c) {
                done.push((c.at, f.to));
            }
            heap.extend(net.take_completions());
        }
        done
    }

    #[test]
    fn one_flow_runs_at_the_bottleneck() {
        let mut net = Network::new();
        let s = net.add_host(100.0 * MB, 100.0 * MB);
        let r = net.add_host(50.0 * MB, 50.0 * MB);
        net.start(0, s, r, PieceIndex(0), 50_000_000, false);
        let done = run_to_end(&mut net);
        assert_eq!(done, vec![(1_000_000_000, r)]);
    }

    #[test]
    fn uplink_is_shared_and_freed_capacity_speeds_up_the_rest() {
        let mut net = Network::new();
        let s = net.add_host(100.0 * MB, 100.0 * MB);
        let a = net.add_host(1000.0 * MB, 1000.0 * MB);
        let b = net.add_host(1000.0 * MB, 1000.0 * MB);
        // 50 MB to a and 100 MB to b: both at 50 MB/s until a finishes at 1 s, then b
        // has 50 MB left at 100 MB/s: done at 1.5 s.
        net.start(0, s, a, PieceIndex(0), 50_000_000, false);
        net.start(0, s, b, PieceIndex(1), 100_000_000, false);
        let done = run_to_end(&mut net);
        assert_eq!(done[0], (1_000_000_000, a));
        assert_eq!(done[1].1, b);
        assert!((done[1].0 as f64 - 1.5e9).abs() < 10.0, "{done:?}");
        assert_eq!(net.uploads(s), 0);
    }

    #[test]
    fn abort_returns_partial_flows_and_frees_the_link() {
        let mut net = Network::new();
        let s = net.add_host(100.0 * MB, 100.0 * MB);
        let a = net.add_host(100.0 * MB, 100.0 * MB);
        net.start(0, s, a, PieceIndex(0), 100_000_000, false);
        let aborted = net.abort_host(500_000_000, a);
        assert_eq!(aborted.len(), 1);
        assert!((aborted[0].moved() - 50e6).abs() < 1.0);
        assert_eq!(net.uploads(s), 0);
        assert_eq!(net.downloads(a), 0);
    }
}
