//! Property tests of the frame decoder: garbage, mutated and truncated frames never panic and
//! never decode to more than they hold; valid frames round-trip.

use livemig_engine::wire::{BatchWriter, Message, HEADER_LEN, MAX_PAYLOAD, PAGE_SIZE};
use proptest::prelude::*;

fn valid_frames() -> Vec<Vec<u8>> {
    let mut page = [0u8; PAGE_SIZE];
    for (i, b) in page.iter_mut().enumerate() {
        *b = (i % 7) as u8;
    }
    let mut w = BatchWriter::new(true);
    w.push(3, &page);
    w.push(4, &[0; PAGE_SIZE]);
    vec![
        w.frame().to_vec(),
        Message::RoundStart { round: 1, pages: 2 }.encode(),
        Message::State {
            digest: 1,
            blob: vec![1, 2, 3],
        }
        .encode(),
        Message::error(1, "x").encode(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        if let Ok((_, n)) = Message::from_bytes(&bytes) {
            prop_assert!(n <= bytes.len());
        }
    }

    #[test]
    fn garbage_after_a_valid_header_never_panics(
        t in 0u16..16,
        len in 0u32..(MAX_PAYLOAD + 10),
        body in proptest::collection::vec(any::<u8>(), 0..8192),
    ) {
        let mut f = b"LMIG".to_vec();
        f.extend_from_slice(&1u16.to_le_bytes());
        f.extend_from_slice(&t.to_le_bytes());
        f.extend_from_slice(&len.to_le_bytes());
        f.extend_from_slice(&body);
        if let Ok((m, n)) = Message::from_bytes(&f) {
            prop_assert_eq!(n, HEADER_LEN + len as usize);
            // What decodes encodes back to the same bytes.
            prop_assert_eq!(m.encode(), f[..n].to_vec());
        }
    }

    #[test]
    fn mutated_valid_frames_never_panic(
        which in 0usize..4,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let mut f = valid_frames()[which].clone();
        for (at, x) in flips {
            let i = at % f.len();
            f[i] ^= x;
        }
        let keep = cut % (f.len() + 1);
        let _ = Message::from_bytes(&f[..keep]);
        let _ = Message::from_bytes(&f);
    }
}

#[test]
fn valid_frames_decode() {
    for f in valid_frames() {
        let (m, n) = Message::from_bytes(&f).expect("valid");
        assert_eq!(n, f.len());
        assert_eq!(m.encode(), f);
    }
}
