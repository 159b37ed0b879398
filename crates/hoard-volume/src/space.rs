//! Which bytes of an extent's data region appends may still write. Extents are append-only: an append
//! must land past everything written, or in a gap that in-flight appends left below the end (a writer
//! reserves offsets in order but its appends to one member may arrive out of order). Bytes written once
//! are never written again by an append: a request that overlaps them is refused, so no request can
//! rewrite a fragment or a header.

use std::collections::BTreeMap;

/// Gaps kept per extent. Past this the lowest are forgotten, and an append that comes that late is
/// refused (its writer moves the put to another volume).
const MAX_GAPS: usize = 256;

/// The claimed extent of an append-only data region.
#[derive(Debug, Default)]
pub struct Space {
    /// First byte past everything claimed.
    end: u64,
    /// Unclaimed gaps below `end`: start -> end.
    gaps: BTreeMap<u64, u64>,
}

impl Space {
    /// A region whose first `end` bytes are taken.
    pub fn new(end: u64) -> Space {
        Space {
            end,
            gaps: BTreeMap::new(),
        }
    }

    /// First byte past everything claimed.
    #[cfg(test)]
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Whether `[start, end)` may be claimed: past everything claimed, or inside one gap.
    pub fn check(&self, start: u64, end: u64) -> Result<(), String> {
        if start >= end {
            return Err(format!("empty range {start}..{end}"));
        }
        if start >= self.end {
            return Ok(());
        }
        match self.gaps.range(..=start).next_back() {
            Some((_, &gap_end)) if end <= gap_end => Ok(()),
            _ => Err(format!(
                "bytes {start}..{end} overlap bytes already written (the extent is written up to {}); extents are append-only",
                self.end
            )),
        }
    }

    /// Claims `[start, end)` after [`Space::check`] allowed it.
    pub fn claim(&mut self, start: u64, end: u64) -> Result<(), String> {
        self.check(start, end)?;
        if start >= self.end {
            if start > self.end {
                self.gaps.insert(self.end, start);
            }
            self.end = end;
        } else {
            let (&gap_start, &gap_end) = self
                .gaps
                .range(..=start)
                .next_back()
                .expect("checked: inside a gap");
            self.gaps.remove(&gap_start);
            if gap_start < start {
                self.gaps.insert(gap_start, start);
            }
            if end < gap_end {
                self.gaps.insert(end, gap_end);
            }
        }
        while self.gaps.len() > MAX_GAPS {
            self.gaps.pop_first();
        }
        Ok(())
    }

    /// Forgets the gaps: a new writer continues past `end` (a fence).
    pub fn seal_gaps(&mut self) {
        self.gaps.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_out_of_order_fill_gaps_and_never_overlap() {
        let mut s = Space::new(0);
        // The third and second fragments arrive before the first.
        s.claim(200, 300).unwrap();
        s.claim(100, 200).unwrap();
        s.claim(0, 100).unwrap();
        assert_eq!(s.end(), 300);
        assert!(s.gaps.is_empty());
        // Anything overlapping written bytes is refused, however it overlaps.
        for (a, b) in [(0, 1), (50, 150), (299, 301), (0, 300), (250, 260)] {
            assert!(s.claim(a, b).is_err(), "{a}..{b}");
        }
        // A gap left by padding takes a fragment that fits it, and only such.
        s.claim(4096, 5000).unwrap();
        assert!(s.check(300, 4097).is_err());
        s.claim(300, 1000).unwrap();
        s.claim(2000, 4096).unwrap();
        assert!(s.check(999, 1100).is_err());
        s.claim(1000, 2000).unwrap();
        assert!(s.gaps.is_empty());
        assert!(s.claim(10, 5).is_err());
    }

    #[test]
    fn offsets_near_the_top_of_the_range_cannot_wrap_into_the_header() {
        let mut s = Space::new(8192);
        // What a wrapping offset + length would look like once computed with checks: refused, since
        // the caller can only pass ends it computed without overflow.
        assert!(s.check(u64::MAX - 10, u64::MAX - 20).is_err());
        assert!(s.claim(0, 4096).is_err());
    }

    #[test]
    fn gaps_are_bounded_and_a_fence_forgets_them() {
        let mut s = Space::new(0);
        for i in 0..(MAX_GAPS as u64 + 10) {
            s.claim(i * 100 + 50, i * 100 + 100).unwrap();
        }
        assert_eq!(s.gaps.len(), MAX_GAPS);
        // The oldest gaps were forgotten: too late now.
        assert!(s.check(0, 50).is_err());
        let last = MAX_GAPS as u64 + 9;
        assert!(s.check(last * 100, last * 100 + 50).is_ok());
        s.seal_gaps();
        assert!(s.check(last * 100, last * 100 + 50).is_err());
    }
}
