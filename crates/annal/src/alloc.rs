//! The binary's allocator, and the one option the server sets on it. The only module of the
//! workspace allowed `unsafe`: setting a mimalloc option is a call into C.
#![allow(unsafe_code)]

/// The engine allocates per event on its read and write paths; mimalloc serves those small,
/// short-lived allocations much faster than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `purge_delay` option: how long freed pages stay with the process before they
/// go back to the system (the option's place in mimalloc's `mi_option_t`).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Makes the server give freed memory back to the system as soon as it is free. By default
/// mimalloc keeps it for a while and gives it back only when the thread that freed it
/// allocates again: after a flood of large appends the server would keep its peak for as
/// long as it stayed quiet, and pages freed but not yet reused would add to the peak itself
/// (W7 in BENCHMARKS.md). The other commands run briefly and keep the default, which
/// reads a little faster.
pub fn return_freed_memory_at_once() {
    // SAFETY: called in `main` before any other thread exists; the option is one mimalloc
    // defines, with a value it documents (0: at once).
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) }
}
