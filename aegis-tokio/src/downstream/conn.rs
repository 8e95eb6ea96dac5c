//! A client connection's I/O state, shared by its loop and its request body: both run in the
//! connection's one task (spawned on the worker's `LocalSet`), so no lock and no atomics.

use std::cell::{RefCell, RefMut};
use std::rc::Rc;

use crate::h1::{BodyDecoder, ReadBuf};

/// The connection's socket (any byte stream: TCP, or an in-memory pipe in tests) and read
/// state.
#[derive(Debug)]
pub(super) struct Io<S> {
    pub(super) stream: S,
    pub(super) rbuf: ReadBuf,
    /// The current request's body still to be read (`None`: read, or there was none).
    pub(super) body: Option<BodyDecoder>,
    /// `100 Continue` bytes still to send before the body is read.
    pub(super) continue_left: &'static [u8],
}

pub(super) type Conn<S> = Rc<RefCell<Io<S>>>;

pub(super) fn new<S>(stream: S) -> Conn<S> {
    Rc::new(RefCell::new(Io {
        stream,
        rbuf: ReadBuf::new(),
        body: None,
        continue_left: b"",
    }))
}

pub(super) fn lock<S>(c: &Conn<S>) -> RefMut<'_, Io<S>> {
    c.borrow_mut()
}
