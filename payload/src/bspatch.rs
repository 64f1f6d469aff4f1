//! bsdiff patches applied with every length and position checked.

/// Rebuild `expected` bytes from `old` and a bsdiff patch stream (Colin Percival's
/// algorithm; the uncompressed stream of the `bsdiff` crate): until the stream ends, a
/// control triple of little-endian u64 `add`, u64 `copy` and sign-magnitude i64 `seek`,
/// then `add` bytes added bytewise to `old` from the current position, then `copy` bytes
/// taken as they are; the old position then moves by `add + seek`.
///
/// Every length is checked against `expected` and every old position against `old`
/// before use: a bad stream is an error, never a panic or an allocation past `expected`.
pub fn bspatch<R: std::io::Read>(
    old: &[u8],
    mut patch: R,
    expected: usize,
) -> std::io::Result<Vec<u8>> {
    use std::io::{Error as E, ErrorKind, Read};
    let bad = |why: &str| E::new(ErrorKind::InvalidData, format!("bsdiff stream: {why}"));
    let mut out = Vec::with_capacity(expected);
    let mut oldpos: i64 = 0;
    // A triple that adds and copies nothing only seeks: a stream of them (zeros compress
    // without end) would keep the applier busy, so their number is bounded by the output.
    let mut idle = 0usize;
    loop {
        let mut ctl = [0u8; 24];
        let mut got = 0;
        while got < 24 {
            match patch.read(&mut ctl[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if got == 0 {
            break;
        }
        if got < 24 {
            return Err(bad("ends inside a control triple"));
        }
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&ctl[i * 8..i * 8 + 8]);
            u64::from_le_bytes(w)
        };
        let room = (expected - out.len()) as u64;
        let (add, copy) = (word(0), word(1));
        if add > room || copy > room - add {
            return Err(bad("writes past the expected length"));
        }
        let s = word(2);
        let seek = if s >> 63 == 0 {
            s as i64
        } else {
            -((s & !(1 << 63)) as i64)
        };
        if add == 0 && copy == 0 {
            idle += 1;
            if idle > expected / 2 + 16 {
                return Err(bad("too many control triples that write nothing"));
            }
        }
        let start = out.len();
        let n = (add + copy) as usize;
        (&mut patch).take(n as u64).read_to_end(&mut out)?;
        if out.len() != start + n {
            return Err(bad("ends inside its data"));
        }
        let from = usize::try_from(oldpos).map_err(|_| bad("seeks before the start"))?;
        let old_part = from
            .checked_add(add as usize)
            .and_then(|end| old.get(from..end))
            .ok_or_else(|| bad("reads past the old data"))?;
        for (n, o) in out[start..start + add as usize].iter_mut().zip(old_part) {
            *n = n.wrapping_add(*o);
        }
        oldpos = oldpos
            .checked_add(add as i64)
            .and_then(|p| p.checked_add(seek))
            .ok_or_else(|| bad("seek overflows"))?;
    }
    if out.len() != expected {
        return Err(bad("shorter than expected"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bspatch_inverts_bsdiff_and_refuses_bad_streams() {
        let old: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i * 7).to_le_bytes())
            .collect();
        // Addresses shifted by a constant, and a few bytes inserted: what bsdiff is for.
        let mut new: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i * 7 + 4096).to_le_bytes())
            .collect();
        new.splice(1000..1000, *b"inserted");
        let mut stream = Vec::new();
        bsdiff::diff(&old, &new, &mut stream).unwrap();
        assert_eq!(bspatch(&old, &stream[..], new.len()).unwrap(), new);
        // Truncations, a wrong expected length, and forged control words.
        for cut in [1usize, 23, 24, 100, stream.len() - 1] {
            assert!(
                bspatch(&old, &stream[..cut], new.len()).is_err(),
                "cut at {cut}"
            );
        }
        assert!(bspatch(&old, &stream[..], new.len() - 1).is_err());
        assert!(bspatch(&old, &stream[..], new.len() + 1).is_err());
        let ctl = |add: u64, copy: u64, seek: u64| {
            let mut c = add.to_le_bytes().to_vec();
            c.extend_from_slice(&copy.to_le_bytes());
            c.extend_from_slice(&seek.to_le_bytes());
            c
        };
        let huge = ctl(u64::MAX, 1, 0);
        assert!(bspatch(&old, &huge[..], 10).is_err());
        let mut past_old = ctl(10, 0, 0);
        past_old.extend_from_slice(&[0; 10]);
        assert!(bspatch(&old[..5], &past_old[..], 10).is_err());
        let mut before = ctl(0, 0, 1 << 63 | 5);
        before.extend(ctl(1, 0, 0));
        before.push(0);
        assert!(bspatch(&old, &before[..], 1).is_err());
        assert_eq!(bspatch(&old, &[][..], 0).unwrap(), Vec::<u8>::new());
    }
}
