//! Which samples share a row, decided from lengths alone.

/// Assignment of samples to rows: `rows[r]` lists indices into the input
/// lengths, in the order they are laid into the row.
pub type Plan = Vec<Vec<usize>>;

/// Best-fit decreasing: samples in order of decreasing length (ties by
/// index), each into the open row with the least room that still fits it,
/// else into a new row.
///
/// Runs in O(n + C) for the sort (a counting sort over lengths) plus a
/// best-fit query per sample over a two-level bitset of free-room values, so
/// a million samples take well under a second on one core.
///
/// # Panics
/// If a length is 0 or exceeds `capacity`; [`crate::pack_pool`] checks
/// lengths before planning.
pub fn best_fit_decreasing(lengths: &[usize], capacity: usize) -> Plan {
    let order = sort_decreasing(lengths, capacity);
    let mut rooms = RoomIndex::new(capacity);
    let mut used: Vec<usize> = Vec::new();
    let mut rows: Plan = Vec::new();
    for i in order {
        let len = lengths[i];
        let row = match rooms.take_at_least(len) {
            Some(row) => row,
            None => {
                rows.push(Vec::new());
                used.push(0);
                rows.len() - 1
            }
        };
        rows[row].push(i);
        used[row] += len;
        let room = capacity - used[row];
        if room > 0 {
            rooms.insert(room, row);
        }
    }
    rows
}

/// First fit in input order: each sample into the first row (by opening
/// order) with room for it. O(n · rows); a baseline for tests and reports.
///
/// # Panics
/// If a length is 0 or exceeds `capacity`.
pub fn first_fit(lengths: &[usize], capacity: usize) -> Plan {
    let mut room: Vec<usize> = Vec::new();
    let mut rows: Plan = Vec::new();
    for (i, &len) in lengths.iter().enumerate() {
        check_len(i, len, capacity);
        match room.iter().position(|&r| r >= len) {
            Some(r) => {
                room[r] -= len;
                rows[r].push(i);
            }
            None => {
                room.push(capacity - len);
                rows.push(vec![i]);
            }
        }
    }
    rows
}

fn check_len(i: usize, len: usize, capacity: usize) {
    assert!(
        len >= 1 && len <= capacity,
        "length {len} of item {i} outside 1..={capacity}"
    );
}

/// Indices sorted by decreasing length, ties by increasing index (stable
/// counting sort).
fn sort_decreasing(lengths: &[usize], capacity: usize) -> Vec<usize> {
    let mut count = vec![0usize; capacity + 2];
    for (i, &len) in lengths.iter().enumerate() {
        check_len(i, len, capacity);
        count[capacity - len + 1] += 1;
    }
    for k in 1..count.len() {
        count[k] += count[k - 1];
    }
    let mut order = vec![0usize; lengths.len()];
    for (i, &len) in lengths.iter().enumerate() {
        let slot = &mut count[capacity - len];
        order[*slot] = i;
        *slot += 1;
    }
    order
}

/// Open rows grouped by free room, with a two-level bitset over room values
/// to find the smallest room >= a length quickly.
struct RoomIndex {
    /// `rows_with[r]`: open rows with exactly `r` free tokens.
    rows_with: Vec<Vec<usize>>,
    /// Bit `r` set when `rows_with[r]` is non-empty.
    words: Vec<u64>,
    /// Bit `w` set when `words[w]` is non-zero.
    summary: Vec<u64>,
}

impl RoomIndex {
    fn new(capacity: usize) -> Self {
        let n_words = capacity / 64 + 1;
        Self {
            rows_with: vec![Vec::new(); capacity + 1],
            words: vec![0; n_words],
            summary: vec![0; n_words / 64 + 1],
        }
    }

    fn insert(&mut self, room: usize, row: usize) {
        self.rows_with[room].push(row);
        self.words[room / 64] |= 1 << (room % 64);
        self.summary[room / 4096] |= 1 << ((room / 64) % 64);
    }

    /// Removes and returns a row with the smallest room >= `len` (the most
    /// recently inserted among equals).
    fn take_at_least(&mut self, len: usize) -> Option<usize> {
        let room = self.next_set(len)?;
        let rows = &mut self.rows_with[room];
        let row = rows.pop().expect("bit set only for non-empty buckets");
        if rows.is_empty() {
            self.words[room / 64] &= !(1 << (room % 64));
            if self.words[room / 64] == 0 {
                self.summary[room / 4096] &= !(1 << ((room / 64) % 64));
            }
        }
        Some(row)
    }

    /// Smallest set bit >= `from`.
    fn next_set(&self, from: usize) -> Option<usize> {
        let w = from / 64;
        if w >= self.words.len() {
            return None;
        }
        let bits = self.words[w] & (!0u64 << (from % 64));
        if bits != 0 {
            return Some(w * 64 + bits.trailing_zeros() as usize);
        }
        // Next non-empty word after `w`, through the summary.
        let next_w = w + 1;
        let mut s = next_w / 64;
        if s >= self.summary.len() {
            return None;
        }
        let mut sbits = if next_w.is_multiple_of(64) {
            self.summary[s]
        } else {
            self.summary[s] & (!0u64 << (next_w % 64))
        };
        loop {
            if sbits != 0 {
                let word = s * 64 + sbits.trailing_zeros() as usize;
                return Some(word * 64 + self.words[word].trailing_zeros() as usize);
            }
            s += 1;
            if s >= self.summary.len() {
                return None;
            }
            sbits = self.summary[s];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Best fit by exhaustive scan over rows, the definition the fast
    /// version must reproduce row count for row count.
    fn naive_bfd(lengths: &[usize], capacity: usize) -> usize {
        let mut order: Vec<usize> = (0..lengths.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
        let mut room: Vec<usize> = Vec::new();
        for i in order {
            let best = (0..room.len())
                .filter(|&r| room[r] >= lengths[i])
                .min_by_key(|&r| room[r]);
            match best {
                Some(r) => room[r] -= lengths[i],
                None => room.push(capacity - lengths[i]),
            }
        }
        room.len()
    }

    #[test]
    fn matches_exhaustive_best_fit() {
        let mut x = 12345u64;
        for capacity in [1usize, 7, 63, 64, 65, 200, 4095, 4096, 4097, 9000] {
            for n in [1usize, 2, 10, 300] {
                let lengths: Vec<usize> = (0..n)
                    .map(|_| {
                        x = x
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        1 + (x >> 33) as usize % capacity
                    })
                    .collect();
                let plan = best_fit_decreasing(&lengths, capacity);
                assert_eq!(plan.len(), naive_bfd(&lengths, capacity), "{capacity} {n}");
            }
        }
    }

    #[test]
    fn room_index_finds_across_summary_words() {
        let mut idx = RoomIndex::new(20_000);
        idx.insert(19_000, 7);
        idx.insert(5, 3);
        assert_eq!(idx.take_at_least(6), Some(7));
        assert_eq!(idx.take_at_least(6), None);
        assert_eq!(idx.take_at_least(5), Some(3));
        assert_eq!(idx.take_at_least(1), None);
    }

    #[test]
    fn sort_is_decreasing_and_stable() {
        let order = sort_decreasing(&[3, 5, 3, 1, 5], 5);
        assert_eq!(order, vec![1, 4, 0, 2, 3]);
    }
}
