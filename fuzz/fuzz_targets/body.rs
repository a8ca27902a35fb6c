//! The DATA/BDAT body reader: never panics, never stores more than its
//! limit, finds end of data only at CRLF.CRLF, and gives the same result
//! however the input is split into reads. (After a fault the message is
//! refused, so what was stored past that point may differ and is not
//! compared.)
#![no_main]
use libfuzzer_sys::fuzz_target;
use ringpost::proto::body::BareEndings;
use ringpost::proto::body::{BodyReader, Framing};

const MAX: usize = 4096;

fn read(input: &[u8], cuts: &[usize], framing: Framing) -> (Vec<u8>, Option<usize>, String) {
    let mut r = BodyReader::new(framing, BareEndings::default(), MAX, 200);
    let mut out = Vec::new();
    let mut pos = 0;
    for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
        let cut = cut.clamp(pos, input.len());
        let (n, done) = r.feed(&input[pos..cut], &mut out);
        pos += n;
        if done {
            return (out, Some(pos), format!("{:?}", r.fault()));
        }
    }
    (out, None, format!("{:?}", r.fault()))
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (cut_a, cut_b) = (data[0] as usize * 7, data[1] as usize * 13);
    let input = &data[2..];
    for framing in [Framing::Data, Framing::Bdat] {
        let whole = read(input, &[], framing);
        let split = read(input, &[cut_a.min(cut_b), cut_a.max(cut_b)], framing);
        assert_eq!((&whole.1, &whole.2), (&split.1, &split.2), "splitting changed end or fault");
        if whole.2 == "None" {
            assert_eq!(whole.0, split.0, "splitting changed the stored body");
        }
        assert!(whole.0.len() <= MAX);
        if let Some(end) = whole.1 {
            assert_eq!(framing, Framing::Data);
            assert!(end >= 3 && &input[end - 3..end] == b".\r\n");
            assert!(end == 3 || input[..end - 3].ends_with(b"\r\n"));
        }
    }
});
