//! Range header parsing. Properties: a served part is inside the file and not empty;
//! an exact `bytes=a-b` is honoured as RFC 9110 says.
#![no_main]
use kie_server::files::serve::{parse_range, RangeReq};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|inp: (&str, u64, u64, u64)| {
    let (h, size, a, b) = inp;
    let size = size % (1 << 40);
    for hdr in [Some(h), None] {
        match parse_range(hdr, size) {
            RangeReq::Part(s, e) => {
                assert!(s <= e && e < size, "{h:?} size {size} -> {s}-{e}");
            }
            RangeReq::Unsatisfiable => assert!(hdr.is_some()),
            RangeReq::Whole => {}
        }
    }
    let hdr = format!("bytes={a}-{b}");
    let got = parse_range(Some(&hdr), size);
    let want = if b < a {
        RangeReq::Whole
    } else if a >= size {
        RangeReq::Unsatisfiable
    } else {
        RangeReq::Part(a, b.min(size - 1))
    };
    assert_eq!(got, want, "{hdr} size {size}");
    let hdr = format!("bytes=-{b}");
    let got = parse_range(Some(&hdr), size);
    let want = if b == 0 || size == 0 {
        RangeReq::Unsatisfiable
    } else {
        RangeReq::Part(size.saturating_sub(b), size - 1)
    };
    assert_eq!(got, want, "{hdr} size {size}");
});
