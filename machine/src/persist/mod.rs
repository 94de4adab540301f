//! Every stateful component's `Persist` implementation. The snapshot code
//! (`vmfork_template`) composes them; nothing else knows their fields.

pub mod devices;
pub mod memory;
pub mod pmem;
pub mod vcpu;
pub mod vm;
