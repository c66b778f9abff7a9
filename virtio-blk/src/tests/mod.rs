//! Device tests over MockSplitQueue: every request type in every layout, and hostile chains.

mod device;
mod hostile;
mod requests;
