//! A generational slab: the connection table of the readiness loops.
//!
//! Connections live in a `Vec` of slots, reused when freed, so finding one
//! by id is an index, not a hash. An id packs the slot index with the
//! slot's generation, which changes every time the slot is freed: an event
//! or a completed read that arrives for a connection already closed carries
//! an old generation and finds nothing, even if a new connection now
//! occupies the same slot (`docs/design.md`, "stale events").

use crate::conn::ConnId;

/// Slots of `T`, addressed by generation-checked ids.
#[derive(Debug)]
pub struct Slab<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    len: usize,
}

#[derive(Debug)]
struct Slot<T> {
    generation: u32,
    value: Option<T>,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab { slots: Vec::new(), free: Vec::new(), len: 0 }
    }
}

impl<T> Slab<T> {
    fn locate(&self, id: ConnId) -> Option<usize> {
        let index = id.index() as usize;
        (self.slots.get(index)?.generation == id.generation()).then_some(index)
    }

    /// Stores `value`; returns its id.
    pub fn insert(&mut self, value: T) -> ConnId {
        self.len += 1;
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                self.slots.push(Slot { generation: 0, value: None });
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[index as usize];
        slot.value = Some(value);
        ConnId::new(index, slot.generation)
    }

    /// The value with this id, unless it has been removed.
    pub fn get(&self, id: ConnId) -> Option<&T> {
        self.slots[self.locate(id)?].value.as_ref()
    }

    /// The value with this id, mutably.
    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut T> {
        let index = self.locate(id)?;
        self.slots[index].value.as_mut()
    }

    /// Removes and returns the value; its id never finds anything again
    /// (until the slot's generation wraps, after 2^32 reuses).
    pub fn remove(&mut self, id: ConnId) -> Option<T> {
        let index = self.locate(id)?;
        let slot = &mut self.slots[index];
        let value = slot.value.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(index as u32);
        self.len -= 1;
        Some(value)
    }

    /// Every value, with its id.
    pub fn iter(&self) -> impl Iterator<Item = (ConnId, &T)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(index, slot)| Some((ConnId::new(index as u32, slot.generation), slot.value.as_ref()?)))
    }

    /// Removes every value for which `keep` says false.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        let doomed: Vec<ConnId> = self.iter().filter(|(_, value)| !keep(value)).map(|(id, _)| id).collect();
        for id in doomed {
            self.remove(id);
        }
    }

    /// Number of values stored.
    pub fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::{ConnId, Slab};

    #[test]
    fn a_reused_slot_does_not_answer_to_the_old_id() {
        let mut slab = Slab::default();
        let first = slab.insert("first");
        assert_eq!(slab.remove(first), Some("first"));
        let second = slab.insert("second");
        assert_ne!(first, second, "same slot, new generation");
        assert_eq!(slab.get(first), None, "a stale id finds nothing");
        assert_eq!(slab.get(second), Some(&"second"));
        assert_eq!(slab.remove(first), None);
        assert_eq!(slab.len(), 1);
        slab.retain(|v| *v != "second");
        assert!(slab.len() == 0 && slab.get(second).is_none());
        assert_eq!(slab.get(ConnId::from_usize(12)), None);
        assert_eq!(slab.get(ConnId::from_usize(usize::MAX)), None);
    }

    #[test]
    fn one_slot_reused_past_the_generation_limit_neither_panics_nor_leaks() {
        let mut slab = Slab::default();
        let mut id = slab.insert(0u64);
        slab.slots[0].generation = u32::MAX - 2; // as after four billion short connections
        id = ConnId::new(id.index(), u32::MAX - 2);
        for round in 1..=5u64 {
            assert_eq!(slab.remove(id), Some(round - 1));
            let next = slab.insert(round);
            assert_eq!(ConnId::from_usize(next.to_usize()), next, "packs and unpacks");
            assert_eq!(slab.get(id), None);
            id = next;
        }
        assert_eq!((slab.len(), slab.slots.len()), (1, 1));
    }
}
