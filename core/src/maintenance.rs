//! Upkeep of the store while the service runs and when it stops.

use crate::errors::Result;
use crate::service::Core;

impl Core {
    /// Copy the WAL into the database file and truncate it: periodically, so
    /// the WAL stays short, and at a clean shutdown, so the file alone holds
    /// everything.
    pub fn checkpoint(&self) -> Result<()> {
        self.store.checkpoint()
    }
}
