//! The GRUB environment parser and RAUC's GRUB variables on arbitrary blocks: never a
//! panic; what parses re-encodes to the same block; the RAUC rules keep it encodable.
#![no_main]

use keel_bootflags::grubenv::GrubEnv;
use keel_bootflags::rauc::RaucGrub;
use keel_bootflags::{AbControl, Slot};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut block = [b'#'; 1024];
    let n = data.len().min(1024);
    block[..n].copy_from_slice(&data[..n]);
    // Give the parser a chance past the signature.
    let sig = b"# GRUB Environment Block\n";
    if data.first() == Some(&b'!') {
        block[..sig.len()].copy_from_slice(sig);
    }
    let Ok(env) = GrubEnv::parse(&block) else {
        return;
    };
    let again = env.to_bytes().expect("a parsed block fits");
    assert_eq!(GrubEnv::parse(&again).ok().as_ref(), Some(&env));
    if let Ok(mut g) = RaucGrub::from_env(env, 2) {
        let _ = g.boot();
        let _ = g.set_active(Slot::B, None);
        let _ = g.mark_bad(Slot::A);
        if let Ok(e) = g.to_env() {
            let b = e.to_bytes().expect("checked by set_all");
            assert!(GrubEnv::parse(&b).is_ok());
        }
    }
});
