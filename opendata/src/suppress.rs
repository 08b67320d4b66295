//! Secondary suppression for tables with margins.
//!
//! The released cube holds every non-empty cell and its margins (any group-by column replaced by
//! `*`). A *line* is one group-by column varying with the others fixed (fixed values may be `*`),
//! together with its total: the cell with that column `*`. Row counts and sums are additive along
//! a line, so a line with exactly one suppressed entry (its total included) gives it away by
//! subtraction. The rule: in such a line suppress the smallest unsuppressed entry (fewest units,
//! then fewest rows, then by key), or the total when no other entry is left; repeat until no line
//! has exactly one suppressed entry.

use std::collections::HashMap;

use crate::engine::CellKey;
use crate::generalise::STAR;

/// What happens to a cell of the cube.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Published with its values.
    Released,
    /// Fewer than k distinct units.
    Primary,
    /// Suppressed so that a primary suppression cannot be recovered from a margin.
    Secondary,
}

/// One line of the cube: its total and its entries (indices into the cells).
#[derive(Debug, Clone)]
pub(crate) struct Line {
    pub total: usize,
    pub entries: Vec<usize>,
}

/// The lines of a cube whose cells are `keys` over the first `d` key positions.
pub(crate) fn lines(keys: &[CellKey], d: usize) -> Vec<Line> {
    let index: HashMap<CellKey, usize> = keys.iter().enumerate().map(|(i, k)| (*k, i)).collect();
    let mut out = Vec::new();
    for dim in 0..d {
        let mut by_total: HashMap<usize, Vec<usize>> = HashMap::new();
        for (i, k) in keys.iter().enumerate() {
            if k[dim] == STAR {
                continue;
            }
            let mut t = *k;
            t[dim] = STAR;
            if let Some(&total) = index.get(&t) {
                by_total.entry(total).or_default().push(i);
            }
        }
        let mut lines: Vec<Line> = by_total
            .into_iter()
            .map(|(total, entries)| Line { total, entries })
            .collect();
        lines.sort_unstable_by_key(|l| l.total);
        out.extend(lines);
    }
    out
}

/// Applies secondary suppression to `status` in place; `size` is (units, rows) per cell.
pub(crate) fn secondary(keys: &[CellKey], d: usize, size: &[(u64, u64)], status: &mut [Status]) {
    let lines = lines(keys, d);
    let suppressed = |s: Status| s != Status::Released;
    loop {
        let mut changed = false;
        for line in &lines {
            let count = line
                .entries
                .iter()
                .filter(|&&e| suppressed(status[e]))
                .count()
                + usize::from(suppressed(status[line.total]));
            if count != 1 {
                continue;
            }
            let pick = line
                .entries
                .iter()
                .copied()
                .filter(|&e| !suppressed(status[e]))
                .min_by_key(|&e| (size[e], keys[e]));
            match pick {
                Some(e) => status[e] = Status::Secondary,
                None => status[line.total] = Status::Secondary,
            }
            changed = true;
        }
        if !changed {
            return;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn key(a: i64, b: i64) -> CellKey {
        [a, b, 0, 0, 0, 0]
    }

    #[test]
    fn a_lone_suppression_pulls_a_partner_in_each_line() {
        // 2 × 2 table with margins; cell (0,0) is small.
        let keys = vec![
            key(0, 0),
            key(0, 1),
            key(1, 0),
            key(1, 1),
            key(STAR, 0),
            key(STAR, 1),
            key(0, STAR),
            key(1, STAR),
            key(STAR, STAR),
        ];
        let size = vec![
            (1, 1),
            (20, 20),
            (30, 30),
            (40, 40),
            (31, 31),
            (60, 60),
            (21, 21),
            (70, 70),
            (91, 91),
        ];
        let mut status: Vec<Status> = size
            .iter()
            .map(|(u, _)| {
                if *u < 10 {
                    Status::Primary
                } else {
                    Status::Released
                }
            })
            .collect();
        secondary(&keys, 2, &size, &mut status);
        // Every inner cell ends up suppressed (each line needs a second one).
        for (i, s) in status.iter().enumerate().take(4) {
            assert_ne!(*s, Status::Released, "cell {i}");
        }
        for l in lines(&keys, 2) {
            let n = l
                .entries
                .iter()
                .filter(|e| status[**e] != Status::Released)
                .count()
                + usize::from(status[l.total] != Status::Released);
            assert_ne!(n, 1);
        }
    }
}
