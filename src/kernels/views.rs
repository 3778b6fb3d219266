//! Strided views of f32 matrices, as the product kernels take them: a read-only one and a
//! writable one over storage that may still be uninitialised, each checked against its storage
//! when built.

use std::mem::MaybeUninit;

/// Panics unless a `rows x cols` matrix at `offset` with strides `rs`, `cs` (non-negative)
/// lies inside storage of `len` elements.
fn check_extent(len: usize, offset: usize, rows: usize, cols: usize, rs: isize, cs: isize) {
    assert!(rs >= 0 && cs >= 0, "negative strides are not supported");
    if rows > 0 && cols > 0 {
        let last = offset + (rows - 1) * rs as usize + (cols - 1) * cs as usize;
        assert!(last < len, "strided matrix reaches past its storage");
    }
}

/// The offset of element `(r0, c0)` of a matrix of `(rows, cols, rs, cs)`, where a `rows x cols`
/// window starts; panics unless that window lies inside the matrix.
fn window_offset(
    (m_rows, m_cols, rs, cs): (usize, usize, isize, isize),
    r0: usize,
    c0: usize,
    rows: usize,
    cols: usize,
) -> isize {
    assert!(
        r0 + rows <= m_rows && c0 + cols <= m_cols,
        "window outside the matrix"
    );
    r0 as isize * rs + c0 as isize * cs
}

/// A read-only strided matrix: element `(r, c)` lies at `ptr + r * rs + c * cs`.
#[derive(Debug, Clone, Copy)]
pub struct View {
    ptr: *const f32,
    pub rows: usize,
    pub cols: usize,
    rs: isize,
    cs: isize,
}

// SAFETY: a `View` only reads, and every function taking one keeps the borrowed storage alive
// (it is built from a slice or a tensor the caller holds) for the duration of the call.
unsafe impl Send for View {}
unsafe impl Sync for View {}

impl View {
    /// A row-major `rows x cols` matrix over `data`.
    pub fn row_major(data: &[f32], rows: usize, cols: usize) -> Self {
        assert_eq!(data.len(), rows * cols, "matrix data does not match its shape");
        Self {
            ptr: data.as_ptr(),
            rows,
            cols,
            rs: cols as isize,
            cs: 1,
        }
    }

    /// A strided matrix inside `data` starting at `offset`. Panics if any element would fall
    /// outside `data` (strides must be non-negative).
    pub fn strided(data: &[f32], offset: usize, rows: usize, cols: usize, rs: isize, cs: isize) -> Self {
        check_extent(data.len(), offset, rows, cols, rs, cs);
        Self {
            ptr: data[offset..].as_ptr(),
            rows,
            cols,
            rs,
            cs,
        }
    }

    /// The `rows x cols` sub-matrix whose top-left element is `(r0, c0)`.
    pub fn window(self, r0: usize, c0: usize, rows: usize, cols: usize) -> Self {
        let offset = window_offset((self.rows, self.cols, self.rs, self.cs), r0, c0, rows, cols);
        Self {
            // SAFETY: inside the parent matrix (`window_offset` checked it).
            ptr: unsafe { self.ptr.offset(offset) },
            rows,
            cols,
            ..self
        }
    }

    /// Where and how the view reads: equal keys read the same elements of the same storage.
    pub fn key(&self) -> (usize, usize, usize, isize, isize) {
        (self.ptr as usize, self.rows, self.cols, self.rs, self.cs)
    }

    /// The first element's address and the row and column strides, for a foreign product.
    pub(super) fn raw(&self) -> (*const f32, isize, isize) {
        (self.ptr, self.rs, self.cs)
    }

    /// The distance between consecutive rows, in elements.
    pub fn row_stride(&self) -> isize {
        self.rs
    }

    /// Column `c` as a slice, for a view whose columns are contiguous (row stride 1).
    pub fn contiguous_column(&self, c: usize) -> &[f32] {
        assert!(self.rs == 1 && c < self.cols, "no contiguous column {c}");
        // SAFETY: the view's extent was checked against its storage when it was built, and the
        // storage outlives the view (see the `Send` note above).
        unsafe { std::slice::from_raw_parts(self.ptr.offset(c as isize * self.cs), self.rows) }
    }

    /// The transpose, without moving data.
    pub fn t(self) -> Self {
        Self {
            ptr: self.ptr,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }
}

/// A writable strided matrix; see [`View`].
#[derive(Debug, Clone, Copy)]
pub struct ViewMut {
    ptr: *mut f32,
    pub rows: usize,
    pub cols: usize,
    rs: isize,
    cs: isize,
}

// SAFETY: callers hand disjoint `ViewMut`s to different threads (see the attention kernels).
unsafe impl Send for ViewMut {}
unsafe impl Sync for ViewMut {}

impl ViewMut {
    /// The first element's address and the row and column strides, for a foreign product.
    pub(super) fn raw(&self) -> (*mut f32, isize, isize) {
        (self.ptr, self.rs, self.cs)
    }

    /// The transpose, without moving data.
    pub(super) fn t(self) -> Self {
        Self {
            ptr: self.ptr,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    /// A row-major `rows x cols` matrix over initialised `data`.
    pub fn row_major(data: &mut [f32], rows: usize, cols: usize) -> Self {
        assert_eq!(data.len(), rows * cols, "matrix data does not match its shape");
        Self {
            ptr: data.as_mut_ptr(),
            rows,
            cols,
            rs: cols as isize,
            cs: 1,
        }
    }

    /// A strided window of `data` (which may still be uninitialised: products only write it,
    /// unless asked to accumulate). Panics if it would reach outside `data`.
    pub fn strided(
        data: &mut [MaybeUninit<f32>],
        offset: usize,
        rows: usize,
        cols: usize,
        rs: isize,
        cs: isize,
    ) -> Self {
        check_extent(data.len(), offset, rows, cols, rs, cs);
        Self {
            ptr: data[offset..].as_mut_ptr().cast(),
            rows,
            cols,
            rs,
            cs,
        }
    }

    /// The `rows x cols` sub-matrix whose top-left element is `(r0, c0)`.
    pub fn window(self, r0: usize, c0: usize, rows: usize, cols: usize) -> Self {
        let offset = window_offset((self.rows, self.cols, self.rs, self.cs), r0, c0, rows, cols);
        Self {
            // SAFETY: inside the parent matrix (`window_offset` checked it).
            ptr: unsafe { self.ptr.offset(offset) },
            rows,
            cols,
            ..self
        }
    }
}

/// A fresh `rows x cols` row-major buffer (still empty: its caller writes all of it through
/// the view, then sets its length) and a writable view of it. The view points into the
/// buffer's heap storage, which moving the `Vec` does not move.
pub fn fresh_matrix(rows: usize, cols: usize) -> (Vec<f32>, ViewMut) {
    let mut out = Vec::with_capacity(rows * cols);
    let view = ViewMut::strided(
        &mut out.spare_capacity_mut()[..rows * cols],
        0,
        rows,
        cols,
        cols as isize,
        1,
    );
    (out, view)
}

/// A buffer that has just been written in full, as initialised values.
///
/// # Safety
/// Every element of `buf` must have been written.
pub unsafe fn assume_written(buf: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: same layout; the caller vouches that every element is initialised.
    unsafe { &mut *(buf as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_views_are_bounds_checked() {
        let data = vec![0.0f32; 10];
        assert!(std::panic::catch_unwind(|| View::strided(&data, 4, 2, 4, 4, 1)).is_err());
        let v = View::strided(&data, 2, 2, 4, 4, 1);
        assert_eq!((v.rows, v.cols), (2, 4));
    }
}
