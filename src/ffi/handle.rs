//! How each opaque C handle is owned, in the type system (after rustls-ffi's
//! `Castable`): the helpers that make, borrow, share and free handles accept
//! only the ownership a handle was made with, so freeing a shared (`Arc`)
//! handle as a boxed one, or mutating a shared one, does not compile.

use std::sync::Arc;

use super::{boundary_or, Failure, Outcome};

/// Ownership of a handle made by `Box::into_raw`: one owner, freed once,
/// mutable through the pointer (by one thread at a time, as the header says).
pub(crate) enum OwnershipBox {}

/// Ownership of a handle made by `Arc::into_raw`: counted references,
/// shared between threads, never mutated through the pointer.
pub(crate) enum OwnershipArc {}

/// A Rust type handed to C as an opaque pointer. The C type is the Rust type
/// itself (cbindgen emits it as an opaque struct), so only the ownership is
/// named here: `OwnershipBox` or `OwnershipArc`.
pub(crate) trait Castable: Sized {
    type Ownership;
}

/// Hands `value` to C as an owned, mutable handle.
pub(crate) fn to_boxed_mut_ptr<T: Castable<Ownership = OwnershipBox>>(value: T) -> *mut T {
    Box::into_raw(Box::new(value))
}

/// Hands `value` to C as a shared handle holding one reference.
pub(crate) fn to_arc_const_ptr<T: Castable<Ownership = OwnershipArc>>(value: T) -> *const T {
    Arc::into_raw(Arc::new(value))
}

/// Borrows the object behind a possibly-NULL handle (NULL is `None`), for
/// however long the caller's call lasts.
pub(crate) fn try_ref<'a, T: Castable>(ptr: *const T) -> Option<&'a T> {
    // SAFETY: a non-NULL handle points to a live `T` this library handed
    // out (boxed or shared, both readable through `&T`), as the header
    // requires; it is not freed while the call that received it runs.
    unsafe { ptr.as_ref() }
}

/// Mutably borrows the object behind a possibly-NULL boxed handle.
pub(crate) fn try_mut<'a, T: Castable<Ownership = OwnershipBox>>(ptr: *mut T) -> Option<&'a mut T> {
    // SAFETY: as in `try_ref`; boxed handles have one owner, and the header
    // says they are used by one thread at a time.
    unsafe { ptr.as_mut() }
}

/// A new counted reference to the object behind a possibly-NULL shared handle.
pub(crate) fn clone_arc<T: Castable<Ownership = OwnershipArc>>(ptr: *const T) -> Option<Arc<T>> {
    if ptr.is_null() {
        return None;
    }
    // SAFETY: `ptr` came from `to_arc_const_ptr` and the caller still holds
    // its reference, so the count is at least one while we add ours.
    unsafe {
        Arc::increment_strong_count(ptr);
        Some(Arc::from_raw(ptr))
    }
}

/// Frees a boxed handle, as the whole of its destructor: NULL is a no-op,
/// and a panic in a `Drop` stops at the boundary.
pub(crate) fn free_box<T: Castable<Ownership = OwnershipBox>>(ptr: *mut T) {
    boundary_or((), || {
        if !ptr.is_null() {
            // SAFETY: a handle `to_boxed_mut_ptr` made, freed once, as the header requires.
            drop(unsafe { Box::from_raw(ptr) });
        }
    })
}

/// Releases the caller's reference to a shared handle, as the whole of its
/// destructor: NULL is a no-op, and a panic in a `Drop` stops at the boundary.
pub(crate) fn free_arc<T: Castable<Ownership = OwnershipArc>>(ptr: *const T) {
    boundary_or((), || {
        if !ptr.is_null() {
            // SAFETY: a handle `to_arc_const_ptr` made, whose caller's
            // reference is released once, as the header requires.
            drop(unsafe { Arc::from_raw(ptr) });
        }
    })
}

/// Borrows a handle argument; NULL is `OCI_E_INVALID_ARGUMENT` naming it.
pub(crate) fn arg<'a, T: Castable>(ptr: *const T, name: &str) -> Outcome<&'a T> {
    try_ref(ptr).ok_or_else(|| null(name))
}

/// Mutably borrows a boxed handle argument; NULL is `OCI_E_INVALID_ARGUMENT`.
pub(crate) fn arg_mut<'a, T: Castable<Ownership = OwnershipBox>>(
    ptr: *mut T,
    name: &str,
) -> Outcome<&'a mut T> {
    try_mut(ptr).ok_or_else(|| null(name))
}

/// A new reference to a shared handle argument, for objects that must keep
/// it alive; NULL is `OCI_E_INVALID_ARGUMENT`.
pub(crate) fn arg_arc<T: Castable<Ownership = OwnershipArc>>(
    ptr: *const T,
    name: &str,
) -> Outcome<Arc<T>> {
    clone_arc(ptr).ok_or_else(|| null(name))
}

fn null(name: &str) -> Failure {
    Failure::invalid(format!("{name} is NULL"))
}
