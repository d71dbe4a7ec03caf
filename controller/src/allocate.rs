//! Which address to try next: this instance's view of a subnet's pools.
//!
//! The store is the truth: an address is given to a port by creating its
//! key (`Absent` compare) in the port's own transaction, so two instances
//! can never give one address twice, and a release is deleting a key that
//! is there. An [`AddressBook`] only spares the store a scan per port: it
//! remembers what this instance saw taken and suggests a free address; a
//! suggestion another instance took meanwhile loses its compare, is marked
//! taken, and the next is tried. Releases by other instances are unseen
//! until the book is reloaded, which happens before a subnet is declared
//! full.

use std::net::Ipv4Addr;

use crate::model::subnet::Pool;

/// A subnet's pools, and which of their addresses are taken.
#[derive(Clone, Debug)]
pub struct AddressBook {
    pools: Vec<Pool>,
    /// One bit per address of the pools, in pool order.
    taken: Vec<u64>,
    size: u64,
    free: u64,
    /// Where the next search starts: after the last address given, so that
    /// a released address is not handed out again at once.
    cursor: u64,
}

impl AddressBook {
    /// A book of `pools` with `taken` (addresses outside the pools are
    /// ignored) and the search starting at `cursor` (an offset in the
    /// pools; instances start at different places to collide less).
    pub fn new(
        pools: &[Pool],
        taken: impl IntoIterator<Item = Ipv4Addr>,
        cursor: u64,
    ) -> AddressBook {
        let size: u64 = pools.iter().map(Pool::size).sum();
        let words = usize::try_from(size.div_ceil(64)).unwrap_or(usize::MAX);
        let mut book = AddressBook {
            pools: pools.to_vec(),
            taken: vec![0; words],
            size,
            free: size,
            cursor: if size == 0 { 0 } else { cursor % size },
        };
        for ip in taken {
            book.mark_taken(ip);
        }
        book
    }

    /// The position of `ip` in the pools.
    fn offset(&self, ip: Ipv4Addr) -> Option<u64> {
        let mut base = 0;
        for pool in &self.pools {
            if pool.contains(ip) {
                return Some(base + u64::from(u32::from(ip) - u32::from(pool.start)));
            }
            base += pool.size();
        }
        None
    }

    fn address(&self, mut offset: u64) -> Ipv4Addr {
        for pool in &self.pools {
            if offset < pool.size() {
                // Below the pool's size, which fits an IPv4 range.
                return Ipv4Addr::from(u32::from(pool.start) + offset as u32);
            }
            offset -= pool.size();
        }
        unreachable!("offsets come from the pools")
    }

    fn bit(&self, offset: u64) -> (usize, u64) {
        ((offset / 64) as usize, 1 << (offset % 64))
    }

    pub fn is_taken(&self, ip: Ipv4Addr) -> bool {
        self.offset(ip).is_some_and(|offset| {
            let (word, mask) = self.bit(offset);
            self.taken[word] & mask != 0
        })
    }

    pub fn mark_taken(&mut self, ip: Ipv4Addr) {
        if let Some(offset) = self.offset(ip) {
            let (word, mask) = self.bit(offset);
            if self.taken[word] & mask == 0 {
                self.taken[word] |= mask;
                self.free -= 1;
            }
        }
    }

    pub fn mark_free(&mut self, ip: Ipv4Addr) {
        if let Some(offset) = self.offset(ip) {
            let (word, mask) = self.bit(offset);
            if self.taken[word] & mask != 0 {
                self.taken[word] &= !mask;
                self.free += 1;
            }
        }
    }

    /// Free addresses as this book sees them.
    pub fn free(&self) -> u64 {
        self.free
    }

    /// A free address, the first after the last one suggested; `None` if
    /// the book sees none. It stays free in the book until marked.
    pub fn suggest(&mut self) -> Option<Ipv4Addr> {
        if self.free == 0 {
            return None;
        }
        let mut offset = self.cursor;
        // Whole words at a time; at most one pass round the pools.
        for _ in 0..=self.taken.len() {
            let (word, _) = self.bit(offset);
            let free_bits = !self.taken[word] & (u64::MAX << (offset % 64));
            if free_bits != 0 {
                let found = word as u64 * 64 + u64::from(free_bits.trailing_zeros());
                if found < self.size {
                    self.cursor = (found + 1) % self.size;
                    return Some(self.address(found));
                }
            }
            offset = if (word + 1) as u64 * 64 >= self.size {
                0
            } else {
                (word + 1) as u64 * 64
            };
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn ip(text: &str) -> Ipv4Addr {
        text.parse().unwrap()
    }

    fn pools() -> Vec<Pool> {
        vec![
            Pool {
                start: ip("10.0.0.2"),
                end: ip("10.0.0.70"),
            },
            Pool {
                start: ip("10.0.0.100"),
                end: ip("10.0.0.130"),
            },
        ]
    }

    #[test]
    fn suggestions_walk_the_pools_and_skip_what_is_taken() {
        let mut book = AddressBook::new(
            &pools(),
            [ip("10.0.0.2"), ip("10.0.0.3"), ip("10.0.0.99")],
            0,
        );
        assert_eq!(book.free(), 69 + 31 - 2);
        assert_eq!(book.suggest(), Some(ip("10.0.0.4")));
        // Not marked: the cursor moved on anyway, a release is not reused at once.
        assert_eq!(book.suggest(), Some(ip("10.0.0.5")));
        let mut book = AddressBook::new(&pools(), [], 68);
        assert_eq!(book.suggest(), Some(ip("10.0.0.70")));
        assert_eq!(
            book.suggest(),
            Some(ip("10.0.0.100")),
            "on to the next pool"
        );
        let mut book = AddressBook::new(&pools(), [], 99);
        assert_eq!(book.suggest(), Some(ip("10.0.0.130")));
        assert_eq!(book.suggest(), Some(ip("10.0.0.2")), "round to the start");
    }

    #[test]
    fn a_full_book_suggests_nothing() {
        let pool = [Pool {
            start: ip("10.0.0.1"),
            end: ip("10.0.0.2"),
        }];
        let mut book = AddressBook::new(&pool, [ip("10.0.0.1"), ip("10.0.0.2")], 0);
        assert_eq!(book.suggest(), None);
        book.mark_free(ip("10.0.0.2"));
        assert_eq!(book.suggest(), Some(ip("10.0.0.2")));
        assert_eq!(AddressBook::new(&[], [], 5).suggest(), None);
    }

    /// What a book is checked against: the set of taken addresses.
    #[derive(Debug, Clone)]
    enum Step {
        Allocate,
        Release(usize),
        /// Another instance took it: seen only when marked.
        TakenElsewhere(u32),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => Just(Step::Allocate),
            2 => any::<usize>().prop_map(Step::Release),
            1 => (0u32..200).prop_map(Step::TakenElsewhere),
        ]
    }

    proptest! {
        /// Random interleavings of allocations, releases and addresses
        /// taken elsewhere: a suggestion is always in a pool and free in
        /// the model, the free count is exact, and nothing is suggested
        /// only when the pools are full.
        #[test]
        fn the_book_agrees_with_a_model(steps in prop::collection::vec(step(), 1..400), cursor in 0u64..200) {
            let pools = pools();
            let all: Vec<Ipv4Addr> = pools.iter().flat_map(|pool| {
                (u32::from(pool.start)..=u32::from(pool.end)).map(Ipv4Addr::from)
            }).collect();
            let mut book = AddressBook::new(&pools, [], cursor);
            let mut taken: BTreeSet<Ipv4Addr> = BTreeSet::new();
            for step in steps {
                match step {
                    Step::Allocate => match book.suggest() {
                        Some(ip) => {
                            prop_assert!(all.contains(&ip));
                            prop_assert!(!taken.contains(&ip), "{ip} suggested twice");
                            book.mark_taken(ip);
                            taken.insert(ip);
                        }
                        None => prop_assert_eq!(taken.len(), all.len()),
                    },
                    Step::Release(n) => {
                        if let Some(&ip) = taken.iter().nth(n % taken.len().max(1)) {
                            taken.remove(&ip);
                            book.mark_free(ip);
                        }
                    }
                    Step::TakenElsewhere(n) => {
                        let ip = Ipv4Addr::from(u32::from(ip("10.0.0.0")) + n);
                        book.mark_taken(ip);
                        if all.contains(&ip) {
                            taken.insert(ip);
                        }
                    }
                }
                prop_assert_eq!(book.free(), (all.len() - taken.len()) as u64);
                for ip in &all {
                    prop_assert_eq!(book.is_taken(*ip), taken.contains(ip));
                }
            }
        }
    }
}
