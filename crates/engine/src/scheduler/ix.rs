//! Typed indices. A pass numbers units, machines and `Conflicts=` globs, and keeps many tables of
//! each; with a type per kind, and tables that take only their own kind, indexing a machine table
//! with a unit's number does not compile. Each index is a `u32` and each table a `Vec`, as before.

use std::marker::PhantomData;
use std::ops::{Index, IndexMut};

/// A dense index into an [`IxVec`].
pub(super) trait Ix: Copy + 'static {
    fn new(i: usize) -> Self;
    fn index(self) -> usize;
}

macro_rules! ix {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub(super) struct $name(u32);

        impl Ix for $name {
            #[inline]
            fn new(i: usize) -> Self {
                debug_assert!(u32::try_from(i).is_ok(), "index {i} out of range");
                $name(i as u32)
            }
            #[inline]
            fn index(self) -> usize {
                self.0 as usize
            }
        }
    };
}

ix!(
    /// A unit's number: its position among the snapshot's units in name order, so comparing two
    /// compares their names.
    UnitIx
);
ix!(
    /// A machine's number: its position among the live machines in id order.
    MachineIx
);
ix!(
    /// A distinct `Conflicts=` or `Replaces=` glob's number.
    GlobIx
);

/// A table with one entry per index of one kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct IxVec<I, T> {
    items: Vec<T>,
    ix: PhantomData<fn(I)>,
}

impl<I: Ix, T> IxVec<I, T> {
    pub fn new() -> Self {
        IxVec::from_vec(Vec::new())
    }

    pub fn from_vec(items: Vec<T>) -> Self {
        IxVec {
            items,
            ix: PhantomData,
        }
    }

    /// `n` entries, each `value`.
    pub fn filled(n: usize, value: T) -> Self
    where
        T: Clone,
    {
        IxVec::from_vec(vec![value; n])
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The index the next `push` gets.
    pub fn next_index(&self) -> I {
        I::new(self.items.len())
    }

    pub fn push(&mut self, value: T) {
        self.items.push(value);
    }

    /// Every index, in order.
    pub fn indices(&self) -> impl Iterator<Item = I> + 'static {
        (0..self.items.len()).map(I::new)
    }

    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.items.iter()
    }

    pub fn iter_mut(&mut self) -> std::slice::IterMut<'_, T> {
        self.items.iter_mut()
    }

    /// Every entry with its index.
    pub fn iter_enumerated(&self) -> impl Iterator<Item = (I, &T)> + '_ {
        self.items.iter().enumerate().map(|(i, t)| (I::new(i), t))
    }

    /// The entries in index order, for searches by content (such as a name).
    pub fn as_slice(&self) -> &[T] {
        &self.items
    }

    pub fn into_iter_enumerated(self) -> impl Iterator<Item = (I, T)> {
        self.items
            .into_iter()
            .enumerate()
            .map(|(i, t)| (I::new(i), t))
    }
}

impl<I: Ix, T> Default for IxVec<I, T> {
    fn default() -> Self {
        IxVec::new()
    }
}

impl<I: Ix, T> Index<I> for IxVec<I, T> {
    type Output = T;
    #[inline]
    fn index(&self, i: I) -> &T {
        &self.items[i.index()]
    }
}

impl<I: Ix, T> IndexMut<I> for IxVec<I, T> {
    #[inline]
    fn index_mut(&mut self, i: I) -> &mut T {
        &mut self.items[i.index()]
    }
}

impl<I: Ix, T> FromIterator<T> for IxVec<I, T> {
    fn from_iter<It: IntoIterator<Item = T>>(iter: It) -> Self {
        IxVec::from_vec(iter.into_iter().collect())
    }
}
