//! Stripe geometry, Reed-Solomon encoding and reconstruction, and fragment checksums.
//!
//! Pure CPU: no tokio, no I/O. The code is systematic: data fragment `i` is bytes
//! `[i * frag_len, (i + 1) * frag_len)` of the block, zero padded past its end, so a reader that holds the
//! data fragments needs no decoding at all.

pub mod pool;

use bytes::{Bytes, BytesMut};
use hoard_types::Geometry;
use reed_solomon_erasure::galois_8::ReedSolomon;

#[derive(Debug, thiserror::Error)]
pub enum ErasureError {
    #[error("invalid geometry {0}: {1}")]
    Geometry(Geometry, String),
    #[error("need {need} fragments to decode, have {have}")]
    TooFewFragments { need: usize, have: usize },
    #[error("fragment {index} has {got} bytes, expected {want}")]
    FragmentLength {
        index: usize,
        got: usize,
        want: usize,
    },
    #[error("expected {want} fragment slots, got {got}")]
    SlotCount { want: usize, got: usize },
    #[error("reed-solomon: {0:?}")]
    Codec(reed_solomon_erasure::Error),
}

/// crc32c of one fragment.
pub fn crc(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// The `k + m` fragments of one block, each `frag_len` bytes, with their crc32c.
#[derive(Clone, Debug)]
pub struct Stripe {
    pub frag_len: usize,
    pub fragments: Vec<Bytes>,
    pub crcs: Vec<u32>,
}

/// A Reed-Solomon codec for one geometry. Cheap to share; build one per geometry and keep it.
pub struct Codec {
    geometry: Geometry,
    rs: ReedSolomon,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Codec({})", self.geometry)
    }
}

impl Codec {
    pub fn new(geometry: Geometry) -> Result<Self, ErasureError> {
        if geometry.m == 0 {
            // reed-solomon-erasure refuses zero parity shards; keep a codec that only splits.
            let rs = ReedSolomon::new(geometry.k as usize, 1)
                .map_err(|e| ErasureError::Geometry(geometry, format!("{e:?}")))?;
            return Ok(Codec { geometry, rs });
        }
        let rs = ReedSolomon::new(geometry.k as usize, geometry.m as usize)
            .map_err(|e| ErasureError::Geometry(geometry, format!("{e:?}")))?;
        Ok(Codec { geometry, rs })
    }

    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Splits `block` into `k` data fragments (zero-copy where a fragment lies wholly inside the block) and
    /// computes `m` parity fragments and every fragment's crc32c.
    pub fn encode(&self, block: &Bytes) -> Result<Stripe, ErasureError> {
        let k = self.geometry.k as usize;
        let m = self.geometry.m as usize;
        let frag_len = self.geometry.frag_len(block.len() as u64) as usize;
        let mut fragments = Vec::with_capacity(k + m);
        for i in 0..k {
            let start = (i * frag_len).min(block.len());
            let end = ((i + 1) * frag_len).min(block.len());
            if end - start == frag_len {
                fragments.push(block.slice(start..end));
            } else {
                let mut padded = pool::take(frag_len);
                padded[..end - start].copy_from_slice(&block[start..end]);
                padded[end - start..].fill(0);
                fragments.push(pool::share(padded));
            }
        }
        if m > 0 {
            // Parity is written over in full by the encoder: pooled buffers need no zeroing.
            let mut parity: Vec<Vec<u8>> = (0..m).map(|_| pool::take(frag_len)).collect();
            self.rs
                .encode_sep(&fragments, &mut parity)
                .map_err(ErasureError::Codec)?;
            fragments.extend(parity.into_iter().map(pool::share));
        }
        let crcs = fragments.iter().map(|f| crc(f)).collect();
        Ok(Stripe {
            frag_len,
            fragments,
            crcs,
        })
    }

    /// Fills in every missing slot of `slots` (`k + m` of them, each `frag_len` bytes when present) from
    /// any `k` present ones. With `data_only`, only the data slots are filled, which is cheaper.
    pub fn reconstruct(
        &self,
        slots: &mut [Option<Vec<u8>>],
        data_only: bool,
    ) -> Result<(), ErasureError> {
        let k = self.geometry.k as usize;
        let width = self.geometry.width() as usize;
        if slots.len() != width {
            return Err(ErasureError::SlotCount {
                want: width,
                got: slots.len(),
            });
        }
        let have = slots.iter().filter(|s| s.is_some()).count();
        if have == width || (data_only && slots[..k].iter().all(|s| s.is_some())) {
            return Ok(());
        }
        if have < k {
            return Err(ErasureError::TooFewFragments { need: k, have });
        }
        if self.geometry.m == 0 {
            return Err(ErasureError::TooFewFragments { need: k, have });
        }
        let len = slots.iter().flatten().map(|s| s.len()).next().unwrap_or(0);
        for (index, s) in slots.iter().enumerate() {
            if let Some(s) = s
                && s.len() != len
            {
                return Err(ErasureError::FragmentLength {
                    index,
                    got: s.len(),
                    want: len,
                });
            }
        }
        if data_only {
            self.rs.reconstruct_data(slots).map_err(ErasureError::Codec)
        } else {
            self.rs.reconstruct(slots).map_err(ErasureError::Codec)
        }
    }

    /// [`Codec::rebuild_data_in_place`] for a block read into `block` (its `k` data fragments' places,
    /// `k * frag_len` bytes) with parity fragments in buffers of their own (by member index); the block
    /// comes back cut to `block_len`.
    pub fn rebuild_block(
        &self,
        mut block: BytesMut,
        present: &[bool],
        parity: &mut [(usize, BytesMut)],
        block_len: usize,
    ) -> Result<Bytes, ErasureError> {
        let mut views: Vec<(usize, &mut [u8])> =
            parity.iter_mut().map(|(i, p)| (*i, &mut p[..])).collect();
        self.rebuild_data_in_place(&mut block, present, &mut views)?;
        block.truncate(block_len);
        Ok(block.freeze())
    }

    /// Rebuilds the missing data fragments of one block in place. `data` holds the `k` data fragments
    /// back to back; those with `present[i]` hold their bytes, the others are overwritten. `parity`
    /// gives parity fragments by member index (`k..k+m`), at least one per missing data fragment. No
    /// fragment is copied: readers fill `data` where the block's bytes belong, and it is the block.
    pub fn rebuild_data_in_place(
        &self,
        data: &mut [u8],
        present: &[bool],
        parity: &mut [(usize, &mut [u8])],
    ) -> Result<(), ErasureError> {
        let k = self.geometry.k as usize;
        let width = self.geometry.width() as usize;
        if present.len() != k {
            return Err(ErasureError::SlotCount {
                want: k,
                got: present.len(),
            });
        }
        if data.is_empty() || !data.len().is_multiple_of(k) {
            return Err(ErasureError::FragmentLength {
                index: 0,
                got: data.len(),
                want: data.len().div_ceil(k) * k,
            });
        }
        let frag_len = data.len() / k;
        let mut parity_slots: Vec<(&mut [u8], bool)> =
            (k..width).map(|_| (&mut [][..], false)).collect();
        for (index, p) in parity.iter_mut() {
            if !(k..width).contains(index) {
                return Err(ErasureError::SlotCount {
                    want: width,
                    got: *index + 1,
                });
            }
            if p.len() != frag_len {
                return Err(ErasureError::FragmentLength {
                    index: *index,
                    got: p.len(),
                    want: frag_len,
                });
            }
            parity_slots[*index - k] = (&mut **p, true);
        }
        let have = present.iter().filter(|p| **p).count()
            + parity_slots.iter().filter(|(_, p)| *p).count();
        if have < k {
            return Err(ErasureError::TooFewFragments { need: k, have });
        }
        if present.iter().all(|p| *p) {
            return Ok(());
        }
        let mut slots: Vec<(&mut [u8], bool)> = data
            .chunks_mut(frag_len)
            .zip(present)
            .map(|(c, p)| (c, *p))
            .chain(parity_slots)
            .collect();
        self.rs
            .reconstruct_data(&mut slots)
            .map_err(ErasureError::Codec)
    }

    /// Decodes the data fragments of one block from whatever fragments are present and returns them,
    /// `k` of them, in order.
    pub fn decode_data(&self, fragments: Vec<Option<Bytes>>) -> Result<Vec<Bytes>, ErasureError> {
        let k = self.geometry.k as usize;
        if fragments[..k.min(fragments.len())]
            .iter()
            .all(|f| f.is_some())
            && fragments.len() >= k
        {
            return Ok(fragments.into_iter().take(k).flatten().collect());
        }
        let len = fragments
            .iter()
            .flatten()
            .map(|f| f.len())
            .next()
            .unwrap_or(0);
        // The codec works in place over mutable buffers: copy what is present into pooled ones and give
        // the missing data slots pooled scratch space.
        // Only k fragments are needed: the present data ones first (they also come back as they are),
        // then parity.
        let mut use_it = vec![false; fragments.len()];
        let mut chosen = 0;
        for i in (0..fragments.len())
            .filter(|&i| i < k)
            .chain(k..fragments.len())
        {
            if chosen < k && fragments[i].is_some() {
                use_it[i] = true;
                chosen += 1;
            }
        }
        let mut bufs: Vec<Vec<u8>> = Vec::with_capacity(fragments.len());
        let mut present: Vec<bool> = Vec::with_capacity(fragments.len());
        for (i, f) in fragments.iter().enumerate() {
            let mut b = pool::take(len);
            let used = use_it[i];
            if let Some(f) = f.as_ref().filter(|_| used) {
                if f.len() != len {
                    return Err(ErasureError::FragmentLength {
                        index: i,
                        got: f.len(),
                        want: len,
                    });
                }
                b.copy_from_slice(f);
            }
            present.push(used);
            bufs.push(b);
        }
        let have = present.iter().filter(|p| **p).count();
        if have < k || self.geometry.m == 0 {
            return Err(ErasureError::TooFewFragments { need: k, have });
        }
        {
            let mut slices: Vec<(&mut [u8], bool)> = bufs
                .iter_mut()
                .zip(&present)
                .map(|(b, p)| (b.as_mut_slice(), *p))
                .collect();
            self.rs
                .reconstruct_data(&mut slices)
                .map_err(ErasureError::Codec)?;
        }
        // Data fragments that were present go back as they came; rebuilt ones as pooled buffers.
        let mut out = Vec::with_capacity(k);
        for (i, b) in bufs.into_iter().enumerate().take(k) {
            match &fragments[i] {
                Some(f) => {
                    out.push(f.clone());
                    drop(pool::share(b));
                }
                None => out.push(pool::share(b)),
            }
        }
        Ok(out)
    }
}

/// The bytes `[offset, offset + len)` of a block as zero-copy slices of its data fragments, in order.
///
/// `first` is the index of the first fragment in `data`; `data` holds consecutive data fragments of
/// `frag_len` bytes each.
///
/// The caller passes a range that [`covering`] accepted and that `data` covers; anything else panics
/// on the slice bounds rather than returning wrong bytes.
pub fn slices(data: &[Bytes], first: usize, frag_len: usize, offset: u64, len: u64) -> Vec<Bytes> {
    assert!(frag_len > 0, "fragments are at least one byte");
    let mut out = Vec::with_capacity(data.len());
    let mut pos = offset as usize - first * frag_len;
    let end = pos + len as usize;
    while pos < end {
        let i = pos / frag_len;
        let s = pos % frag_len;
        let take = (frag_len - s).min(end - pos);
        out.push(data[i].slice(s..s + take));
        pos += take;
    }
    out
}

/// Joins slices into one buffer; without a copy when there is only one.
pub fn join(parts: &[Bytes]) -> Bytes {
    if parts.len() == 1 {
        return parts[0].clone();
    }
    let mut out = BytesMut::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        out.extend_from_slice(p);
    }
    out.freeze()
}

/// The bytes `[offset, offset + len)` of a block, in one buffer. See [`slices`].
pub fn assemble(data: &[Bytes], first: usize, frag_len: usize, offset: u64, len: u64) -> Bytes {
    join(&slices(data, first, frag_len, offset, len))
}

/// The data fragment indices `[first, last]` that cover `[offset, offset + len)` of a block; `None` for
/// a zero fragment length or a range whose end does not fit in a `u64`.
pub fn covering(frag_len: u64, offset: u64, len: u64) -> Option<(usize, usize)> {
    if frag_len == 0 {
        return None;
    }
    let last_byte = offset.checked_add(len.max(1) - 1)?;
    let first = usize::try_from(offset / frag_len).ok()?;
    let last = usize::try_from(last_byte / frag_len).ok()?;
    Some((first, last))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, RngCore};

    fn random_block(len: usize) -> Bytes {
        let mut v = vec![0u8; len];
        rand::rng().fill_bytes(&mut v);
        Bytes::from(v)
    }

    #[test]
    fn data_fragments_are_rebuilt_in_place_from_parity() {
        let codec = Codec::new(Geometry::DEFAULT).unwrap();
        let block = random_block(4 * 1024 * 1024 - 77);
        let stripe = codec.encode(&block).unwrap();
        let fl = stripe.frag_len;
        for lost in [vec![0usize], vec![2, 5], vec![0, 1, 4]] {
            let mut data: Vec<u8> = stripe.fragments[..6].concat();
            let mut present = vec![true; 6];
            for &i in &lost {
                data[i * fl..(i + 1) * fl].fill(0xEE);
                present[i] = false;
            }
            // The last parity fragments, as many as are lost.
            let mut parity: Vec<(usize, Vec<u8>)> = (9 - lost.len()..9)
                .map(|i| (i, stripe.fragments[i].to_vec()))
                .collect();
            let mut views: Vec<(usize, &mut [u8])> =
                parity.iter_mut().map(|(i, p)| (*i, &mut p[..])).collect();
            codec
                .rebuild_data_in_place(&mut data, &present, &mut views)
                .unwrap();
            assert!(data[..block.len()] == block[..], "lost {lost:?}");
        }
        // One parity fragment fewer than the losses: named, not guessed.
        let mut data: Vec<u8> = stripe.fragments[..6].concat();
        let mut p8 = stripe.fragments[8].to_vec();
        let err = codec
            .rebuild_data_in_place(
                &mut data,
                &[false, false, true, true, true, true],
                &mut [(8, &mut p8[..])],
            )
            .unwrap_err();
        assert!(
            matches!(err, ErasureError::TooFewFragments { need: 6, have: 5 }),
            "{err}"
        );
    }

    #[test]
    fn encode_then_decode_with_any_m_lost() {
        let codec = Codec::new(Geometry::DEFAULT).unwrap();
        let mut rng = rand::rng();
        for len in [1usize, 5, 383, 384, 385, 4096, 700_001, 4 * 1024 * 1024] {
            let block = random_block(len);
            let stripe = codec.encode(&block).unwrap();
            assert_eq!(stripe.fragments.len(), 9);
            for f in &stripe.fragments {
                assert_eq!(f.len(), stripe.frag_len);
            }
            for (f, c) in stripe.fragments.iter().zip(&stripe.crcs) {
                assert_eq!(crc(f), *c);
            }
            // Lose 3 random fragments.
            let mut present: Vec<Option<Bytes>> =
                stripe.fragments.iter().cloned().map(Some).collect();
            for _ in 0..3 {
                let i = rng.random_range(0..9);
                present[i] = None;
            }
            let data = codec.decode_data(present).unwrap();
            let whole = assemble(&data, 0, stripe.frag_len, 0, len as u64);
            assert_eq!(whole, block, "len {len}");
        }
    }

    #[test]
    fn reused_buffers_never_leak_old_bytes_into_new_stripes() {
        let codec = Codec::new(Geometry::DEFAULT).unwrap();
        for round in 0..20 {
            // Sizes that pad the last data fragment, so that pooled padding must be zeroed.
            let len = 1_000_003 + round * 4097;
            let block = random_block(len);
            let stripe = codec.encode(&block).unwrap();
            let mut present: Vec<Option<Bytes>> =
                stripe.fragments.iter().cloned().map(Some).collect();
            present[round % 6] = None;
            present[6 + round % 3] = None;
            let data = codec.decode_data(present).unwrap();
            assert_eq!(
                assemble(&data, 0, stripe.frag_len, 0, len as u64),
                block,
                "round {round}"
            );
            // The padding of the last fragment is zeros, whatever the pool held before.
            let last = &stripe.fragments[5];
            let used = len - 5 * stripe.frag_len;
            assert!(last[used..].iter().all(|&b| b == 0), "round {round}");
        }
    }

    #[test]
    fn four_lost_fragments_cannot_decode() {
        let codec = Codec::new(Geometry::DEFAULT).unwrap();
        let stripe = codec.encode(&random_block(10_000)).unwrap();
        let mut present: Vec<Option<Bytes>> = stripe.fragments.into_iter().map(Some).collect();
        for slot in present.iter_mut().take(4) {
            *slot = None;
        }
        assert!(matches!(
            codec.decode_data(present),
            Err(ErasureError::TooFewFragments { need: 6, have: 5 })
        ));
    }

    #[test]
    fn ranges_assemble_from_covering_fragments() {
        let codec = Codec::new(Geometry::DEFAULT).unwrap();
        let block = random_block(1_000_000);
        let stripe = codec.encode(&block).unwrap();
        let f = stripe.frag_len as u64;
        for (off, len) in [
            (0u64, 1u64),
            (f - 1, 2),
            (f, f),
            (123_456, 500_000),
            (999_999, 1),
        ] {
            let (a, b) = covering(f, off, len).unwrap();
            let part = assemble(&stripe.fragments[a..=b], a, stripe.frag_len, off, len);
            assert_eq!(&part[..], &block[off as usize..(off + len) as usize]);
        }
        // Ranges no block has are refused, not wrapped.
        assert_eq!(covering(f, 2, u64::MAX), None);
        assert_eq!(covering(0, 0, 1), None);
        assert_eq!(
            covering(f, u64::MAX, 1),
            Some(((u64::MAX / f) as usize, (u64::MAX / f) as usize))
        );
    }

    #[test]
    fn reconstruct_restores_parity_members_too() {
        let codec = Codec::new(Geometry::new(4, 2).unwrap()).unwrap();
        let stripe = codec.encode(&random_block(40_000)).unwrap();
        let mut slots: Vec<Option<Vec<u8>>> =
            stripe.fragments.iter().map(|f| Some(f.to_vec())).collect();
        slots[1] = None;
        slots[5] = None;
        codec.reconstruct(&mut slots, false).unwrap();
        assert_eq!(slots[1].as_deref().unwrap(), &stripe.fragments[1][..]);
        assert_eq!(slots[5].as_deref().unwrap(), &stripe.fragments[5][..]);
    }
}
