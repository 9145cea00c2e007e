//! Which hosts have a session open with which, kept apart from the host records for the
//! dispatcher's sake (see [`Sessions`]).

use smallvec::SmallVec;

/// Every host's open sessions, apart from `Host` and inline: every message checks its
/// session, and at 10,000 hosts a set behind a pointer inside a large host record cost two
/// cache misses per message (the dispatcher's hottest spot). An agent has about a dozen
/// sessions, which fit in one cache line; an origin's hundreds spill to the heap.
#[derive(Debug, Default)]
pub(super) struct Sessions(Vec<SmallVec<[u32; 13]>>);

impl Sessions {
    pub(super) fn add_host(&mut self) {
        self.0.push(SmallVec::new());
    }

    pub(super) fn contains(&self, host: u32, peer: u32) -> bool {
        self.0[host as usize].contains(&peer)
    }

    /// Opens `host`'s side of a session with `peer`; false if it was open.
    pub(super) fn insert(&mut self, host: u32, peer: u32) -> bool {
        let set = &mut self.0[host as usize];
        if set.contains(&peer) {
            return false;
        }
        set.push(peer);
        true
    }

    /// Closes `host`'s side of a session with `peer`; false if it was not open.
    pub(super) fn remove(&mut self, host: u32, peer: u32) -> bool {
        let set = &mut self.0[host as usize];
        match set.iter().position(|p| *p == peer) {
            Some(i) => {
                set.swap_remove(i);
                true
            }
            None => false,
        }
    }

    /// Closes every session of `host`, returning its peers in ascending order (events
    /// scheduled from them must not depend on the order sessions were opened and closed).
    pub(super) fn take(&mut self, host: u32) -> Vec<u32> {
        let mut peers = std::mem::take(&mut self.0[host as usize]).into_vec();
        peers.sort_unstable();
        peers
    }
}

#[cfg(test)]
mod tests {
    use super::Sessions;

    #[test]
    fn sessions_open_close_and_spill_past_the_inline_ones() {
        let mut s = Sessions::default();
        s.add_host();
        s.add_host();
        assert!(s.insert(0, 1) && !s.insert(0, 1));
        assert!(s.contains(0, 1) && !s.contains(1, 0));
        // An origin's hundreds of sessions outgrow the inline slots.
        for p in (2..300).rev() {
            assert!(s.insert(1, p));
        }
        assert!(s.remove(1, 150) && !s.remove(1, 150) && !s.contains(1, 150));
        let peers = s.take(1);
        assert_eq!(peers.len(), 297);
        assert!(peers.windows(2).all(|w| w[0] < w[1]), "ascending");
        assert!(!s.contains(1, 2));
        assert!(s.contains(0, 1));
    }
}
