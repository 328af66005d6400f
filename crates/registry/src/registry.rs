//! [`Registry`]: fleet's data model over a [`Store`].

use crate::keys::Keys;
use crate::store::Store;
use std::sync::Arc;

/// fleet's registry over any [`Store`]. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    pub store: Arc<dyn Store>,
    pub keys: Keys,
}

impl Registry {
    pub fn new(store: Arc<dyn Store>, prefix: &str) -> Registry {
        Registry { store, keys: Keys::new(prefix) }
    }
}
