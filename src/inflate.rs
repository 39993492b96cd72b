//! Gzip decoding with ISA-L's igzip (the `isal` feature): the one place that
//! calls into ISA-L, so all of its unsafe FFI lives here.
//!
//! Why ISA-L: on the benchmark's layers its inflate is 1.4-1.5x as fast as
//! zlib-ng's (see the commit that added this module), and inflate is the
//! single pass's CPU bound for gzip layers.

use std::io::{self, Read};
use std::os::raw::c_int;

use isal_sys::igzip_lib as isal;

/// How many compressed bytes are read from the blob at a time.
const INPUT_BUFFER: usize = 128 * 1024;

/// How many inflated bytes a refill keeps in front of the new ones. ISA-L
/// reads ahead into a 64-bit bit buffer, and when a member ends it hands
/// back the whole bytes it did not use by moving `next_in` back over them:
/// they must still be there, even if they came from an earlier read.
const KEPT: usize = 8;

/// Reads the tar out of a gzip blob of one or more members (pigz and
/// parallel compressors write several), checking the CRC32 and ISIZE of
/// every member. Bytes after a member are taken for the next member, so
/// trailing garbage fails as a bad header, as flate2's `MultiGzDecoder` does.
pub(crate) struct GzipDecoder<R> {
    blob: R,
    /// Boxed: the state is about 85 KiB (a 64 KiB buffer for the 32 KiB
    /// window, and the Huffman tables), too big to move around by value.
    state: Box<isal::inflate_state>,
    input: Box<[u8]>,
    /// `input[start..end]` is read from the blob and not yet inflated; up
    /// to [`KEPT`] bytes before `start` are the last ones inflated.
    start: usize,
    end: usize,
    /// The last member ended and the blob ended with it.
    finished: bool,
    /// The error ISA-L returned, returned again by every later read: its
    /// state is not meant to be driven on after one.
    failed: Option<c_int>,
}

impl<R: Read> GzipDecoder<R> {
    pub(crate) fn new(blob: R) -> GzipDecoder<R> {
        // SAFETY: inflate_state is plain data (integers, arrays, pointers
        // that ISA-L only follows once next_in/next_out are set below), so
        // all zeroes is a valid value, and isal_inflate_init initializes it.
        let mut state: Box<isal::inflate_state> = Box::new(unsafe { std::mem::zeroed() });
        unsafe { isal::isal_inflate_init(&mut *state) };
        state.crc_flag = isal::ISAL_GZIP;
        GzipDecoder {
            blob,
            state,
            input: vec![0; INPUT_BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            finished: false,
            failed: None,
        }
    }

    /// Refills the input buffer once it is used up, after the last [`KEPT`]
    /// bytes inflated; false at the blob's end.
    fn fill(&mut self) -> io::Result<bool> {
        if self.start == self.end {
            let kept = self.end.min(KEPT);
            self.input.copy_within(self.end - kept..self.end, 0);
            let read = loop {
                match self.blob.read(&mut self.input[kept..]) {
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                    result => break result?,
                }
            };
            (self.start, self.end) = (kept, kept + read);
        }
        Ok(self.start < self.end)
    }
}

impl<R: Read> Read for GzipDecoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while !self.finished && !buf.is_empty() {
            if let Some(status) = self.failed {
                return Err(corrupt(status));
            }
            if !self.fill()? {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the blob ends inside a gzip member",
                ));
            }
            let room = buf.len().min(u32::MAX as usize);
            let state = &mut *self.state;
            state.next_in = self.input[self.start..self.end].as_mut_ptr();
            state.avail_in = (self.end - self.start) as u32;
            state.next_out = buf.as_mut_ptr();
            state.avail_out = room as u32;
            // SAFETY: next_in/avail_in and next_out/avail_out describe live
            // buffers that nothing else touches during the call; the state
            // keeps its own copy of the window, so neither buffer is read
            // again after the call returns.
            let status = unsafe { isal::isal_inflate(state) };
            // What is left, handed-back bytes included, must lie in the
            // buffer; on malformed input ISA-L has been seen to report more
            // (a wrapped count).
            let left = self.end.checked_sub(state.avail_in as usize);
            let written = room - state.avail_out as usize;
            let Some(left) = left else {
                self.failed = Some(isal::ISAL_INVALID_BLOCK);
                return Err(corrupt(isal::ISAL_INVALID_BLOCK));
            };
            self.start = left;
            if status != isal::ISAL_DECOMP_OK as c_int {
                self.failed = Some(status);
                return Err(corrupt(status));
            }
            if state.block_state == isal::isal_block_state_ISAL_BLOCK_FINISH {
                // The member's CRC32 and ISIZE matched (ISA-L checks both
                // before it reports the member finished). Another member
                // follows if any byte is left.
                if self.fill()? {
                    // SAFETY: the state was initialized in `new`.
                    unsafe { isal::isal_inflate_reset(&mut *self.state) };
                    self.state.crc_flag = isal::ISAL_GZIP;
                } else {
                    self.finished = true;
                }
            }
            if written > 0 {
                return Ok(written);
            }
        }
        Ok(0)
    }
}

/// The error of an ISA-L status other than ISAL_DECOMP_OK, in words.
fn corrupt(status: c_int) -> io::Error {
    let what = match status {
        isal::ISAL_INVALID_BLOCK => "invalid deflate block",
        isal::ISAL_INVALID_SYMBOL => "invalid deflate symbol",
        isal::ISAL_INVALID_LOOKBACK => "invalid deflate distance",
        isal::ISAL_INVALID_WRAPPER => "invalid gzip header",
        isal::ISAL_UNSUPPORTED_METHOD => "gzip member not deflate-compressed",
        isal::ISAL_INCORRECT_CHECKSUM => "gzip member's CRC32 or size does not match its data",
        _ => "ISA-L inflate failed",
    };
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{what} (ISA-L status {status})"),
    )
}
