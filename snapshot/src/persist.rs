/// The one trait through which every stateful component (vCPU, irqchip,
/// clock, each device, guest memory) saves and restores itself, so that a
/// snapshot is a tree of plain serde `State` values and the snapshot code
/// has no per-component special cases.
pub trait Persist: Sized {
    /// Plain data, serde-encodable, no file descriptors or pointers.
    type State;
    /// What restoring needs besides the state (fds, memory, a VM handle).
    type RestoreArgs<'a>;
    type Error;

    fn save(&self) -> Result<Self::State, Self::Error>;
    fn restore(args: Self::RestoreArgs<'_>, state: &Self::State) -> Result<Self, Self::Error>;
}
