/// The trait through which the machine's stateful components save and
/// restore themselves: the VM (irqchip, PIT, clock), each vCPU, the serial
/// port, guest RAM (its layout; the contents are the `memory` file) and
/// the clone-info page (which saves nothing: it is written fresh by every
/// restore). A snapshot is then a tree of plain serde `State` values, and
/// a restore a walk over it in the order docs/snapshot-format.md gives.
///
/// Not everything goes through it: the ready port's state is read from
/// and handed to the machine's control state directly, and a diff
/// snapshot's dirty ranges are added by the snapshot code.
pub trait Persist: Sized {
    /// Plain data, serde-encodable, no file descriptors or pointers.
    type State;
    /// What restoring needs besides the state (fds, memory, a VM handle).
    type RestoreArgs<'a>;
    type Error;

    fn save(&self) -> Result<Self::State, Self::Error>;
    fn restore(args: Self::RestoreArgs<'_>, state: &Self::State) -> Result<Self, Self::Error>;
}
