//! keel-bootflags on a target without std, as vendor firmware tooling would embed it:
//! the A/B model, a boot loader's rules and two encodings, with a fixed heap. Exits 0
//! when every check holds, 1 otherwise.
#![no_std]
#![no_main]

extern crate alloc;

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicUsize, Ordering};

use keel_bootflags::android::BootloaderControl;
use keel_bootflags::grubenv::GrubEnv;
use keel_bootflags::rauc::RaucGrub;
use keel_bootflags::{AbControl, PriorityPolicy, PrioritySlots, Slot, SlotState};

// The C library gives memcpy and friends and the start files that call `main`; std is
// what must not be there. The prebuilt core and alloc are compiled for unwinding, so
// they name the unwinder's symbols; with panic = "abort" nothing ever calls them, and
// libgcc_s and the stub below satisfy the linker.
#[link(name = "c")]
#[link(name = "gcc_s")]
extern "C" {}

/// Never called: panics abort.
#[no_mangle]
pub extern "C" fn rust_eh_personality() {}

/// A bump allocator over a static arena: what firmware without an operating system has.
struct Arena {
    memory: UnsafeCell<[u8; 1 << 20]>,
    next: AtomicUsize,
}

// SAFETY: allocation only hands out disjoint ranges (the offset is bumped atomically).
unsafe impl Sync for Arena {}

// SAFETY: every pointer returned lies inside the arena, aligned as asked, and no range is
// handed out twice; freeing is a no-op, which is allowed.
unsafe impl GlobalAlloc for Arena {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let base = self.memory.get() as usize;
        let mut cur = self.next.load(Ordering::Relaxed);
        loop {
            let start = (base + cur).next_multiple_of(layout.align()) - base;
            let end = start + layout.size();
            if end > 1 << 20 {
                return core::ptr::null_mut();
            }
            match self
                .next
                .compare_exchange(cur, end, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return (base + start) as *mut u8,
                Err(now) => cur = now,
            }
        }
    }
    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {}
}

#[global_allocator]
static HEAP: Arena = Arena {
    memory: UnsafeCell::new([0; 1 << 20]),
    next: AtomicUsize::new(0),
};

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

fn checks() -> Result<(), keel_bootflags::Error> {
    // Flatcar's rules over GPT bits: B armed with one try, not marked good, falls back.
    let good = SlotState {
        priority: 1,
        tries: 0,
        successful: true,
    };
    let mut gpt = PrioritySlots::new(
        alloc::vec![good, SlotState::default()],
        PriorityPolicy::Flatcar,
    )?;
    gpt.set_active(Slot::B, Some(1))?;
    if gpt.boot() != Some(Slot::B) || gpt.boot() != Some(Slot::A) {
        return Err(keel_bootflags::Error::Internal("gptprio fallback"));
    }
    // RAUC's GRUB variables through a GRUB environment block and back.
    let mut rauc = RaucGrub::init(2, Slot::A)?;
    rauc.set_active(Slot::B, None)?;
    let block = rauc.to_env()?.to_bytes()?;
    let again = RaucGrub::from_env(GrubEnv::parse(&block)?, 2)?;
    if again.next_boot() != Some(Slot::B) {
        return Err(keel_bootflags::Error::Internal("grubenv round trip"));
    }
    // Android's bootloader_control, encoded and parsed.
    let mut misc = BootloaderControl::new(2, Slot::A)?;
    misc.set_active(Slot::B, None)?;
    let parsed = BootloaderControl::parse(&misc.to_bytes())?;
    if parsed.next_boot() != Some(Slot::B) {
        return Err(keel_bootflags::Error::Internal("misc round trip"));
    }
    Ok(())
}

/// The C entry point (the platform's start files call it).
#[no_mangle]
pub extern "C" fn main(_argc: i32, _argv: *const *const u8) -> i32 {
    match checks() {
        Ok(()) => 0,
        Err(_) => 1,
    }
}
