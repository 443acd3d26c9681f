//! A generational slab: the connection table of the readiness loops.
//!
//! Connections live in a `Vec` of slots, reused when freed, so finding one
//! by id is an index, not a hash. An id packs the slot index with the
//! slot's generation, which changes every time the slot is freed: an event
//! or a completed read that arrives for a connection already closed carries
//! an old generation and finds nothing, even if a new connection now
//! occupies the same slot (DESIGN section 4: "slab tokens, check the
//! generation").

/// Ids below this are never handed out (a loop's own tokens use them).
const FIRST_ID: usize = 1 << 32;

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
    fn id(index: u32, generation: u32) -> usize {
        FIRST_ID + ((generation as usize) << 32 | index as usize)
    }

    fn locate(&self, id: usize) -> Option<usize> {
        let raw = id.checked_sub(FIRST_ID)?;
        let (index, generation) = (raw as u32 as usize, (raw >> 32) as u32);
        (self.slots.get(index)?.generation == generation).then_some(index)
    }

    /// Stores `value`; returns its id.
    pub fn insert(&mut self, value: T) -> usize {
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
        Slab::<T>::id(index, slot.generation)
    }

    /// The value with this id, unless it has been removed.
    pub fn get(&self, id: usize) -> Option<&T> {
        self.slots[self.locate(id)?].value.as_ref()
    }

    /// The value with this id, mutably.
    pub fn get_mut(&mut self, id: usize) -> Option<&mut T> {
        let index = self.locate(id)?;
        self.slots[index].value.as_mut()
    }

    /// Removes and returns the value; its id never finds anything again.
    pub fn remove(&mut self, id: usize) -> Option<T> {
        let index = self.locate(id)?;
        let slot = &mut self.slots[index];
        let value = slot.value.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(index as u32);
        self.len -= 1;
        Some(value)
    }

    /// Every value, with its id.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &T)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(index, slot)| Some((Slab::<T>::id(index as u32, slot.generation), slot.value.as_ref()?)))
    }

    /// Removes every value for which `keep` says false.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        let doomed: Vec<usize> = self.iter().filter(|(_, value)| !keep(value)).map(|(id, _)| id).collect();
        for id in doomed {
            self.remove(id);
        }
    }

    /// Number of values stored.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::Slab;

    #[test]
    fn a_reused_slot_does_not_answer_to_the_old_id() {
        let mut slab = Slab::default();
        let first = slab.insert("first");
        assert!(first >= 1 << 32, "ids stay clear of a loop's own tokens");
        assert_eq!(slab.remove(first), Some("first"));
        let second = slab.insert("second");
        assert_ne!(first, second, "same slot, new generation");
        assert_eq!(slab.get(first), None, "a stale id finds nothing");
        assert_eq!(slab.get(second), Some(&"second"));
        assert_eq!(slab.remove(first), None);
        assert_eq!(slab.len(), 1);
        slab.retain(|v| *v != "second");
        assert!(slab.is_empty() && slab.get(second).is_none());
        assert_eq!(slab.get(12), None);
        assert_eq!(slab.get(usize::MAX), None);
    }
}
