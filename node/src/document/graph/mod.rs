//! The reactive cell graph: a sans-IO state machine over a document's cells in order.
//!
//! # Semantics
//! Every code and SQL cell is analysed ([`super::analysis`]) into the global names it defines,
//! reads and deletes. The graph is **position-aware**, so notebooks from the wild run as written:
//!
//! - A reference binds to the **nearest cell above** that defines the name. Real notebooks
//!   redefine `df` in many cells; each reader gets the `df` of the closest definer above it.
//!   Edges therefore always point down the document: the graph cannot cycle, and document order
//!   is always a valid execution order.
//! - A name that only a cell **below** defines, a name the nearest cell above **deletes**, a
//!   `from m import *`, and a cell that does not parse are **cell errors**, shown on the cell
//!   that has them. Such a cell is never run, nor is anything that depends on it. A reference
//!   to a name no cell defines is not an error: it may be a builtin, an import's side effect, or
//!   fail at run time in the kernel like it would in Jupyter.
//! - A builtin (`print`, `display`) binds only if a cell above shadows it.
//!
//! **Staleness.** A cell is stale when what it last produced may no longer match its source and
//! inputs: it never ran since the kernel started, its source changed, a cell it depends on
//! (transitively) started again, or one of its references now binds elsewhere. Editing a cell
//! marks it and all its descendants stale at once; inserting, moving or deleting a cell marks the
//! cells whose bindings changed, and their descendants.
//!
//! **Running.** [`CellGraph::run`] queues a cell and returns the order in which the queued cells
//! will start. Before a cell starts, every cell it reads from must be up to date *in the kernel*:
//! a parent that is stale, or whose value of the name was since overwritten in the kernel by
//! another definer (the kernel has one namespace; running cell 2 after cell 3 redefined `df`
//! would otherwise read cell 3's `df`), runs first, recursively. So a run never uses stale inputs,
//! and re-running `df = clean(df)` re-runs the cell that loads `df` first instead of cleaning an
//! already-cleaned frame. In [`ExecutionMode::Reactive`] (the default) running a cell also queues
//! all its descendants; in [`ExecutionMode::Lazy`] it only marks them stale.
//!
//! **What schedules runs by itself.** Nothing that involves new code: inserting or editing a cell
//! never runs anything (so half-typed code never runs). In reactive mode, deleting or moving a
//! cell re-runs the up-to-date cells whose references now bind elsewhere (and their
//! descendants); in lazy mode they are only marked stale.
//!
//! **Deleted globals.** When a cell is deleted, the globals it defined that no remaining cell
//! defines are reported ([`Edit::undefined`]) so the driver can `del` them in the kernel. When an
//! edited cell next runs, the globals its previous run defined that no cell defines any more come
//! with its [`Execution::delete_first`].
//!
//! **Epochs.** Every started run gets an [`Epoch`] from a counter that only grows. Outputs are
//! accepted for a cell's latest run only ([`CellGraph::accept_output`]), also after it finished
//! (IOPub messages may trail the reply). Interrupting and losing the kernel cancel queued and
//! running cells, so their late outputs are dropped.
//!
//! **Kernel loss.** Every cell becomes stale and the graph forgets what the kernel held;
//! [`CellGraph::replay`] queues every code cell in order.
//!
//! # Not tracked
//! Mutation through methods or attributes (`df.append(...)`, `lst.sort()`, `obj.x = 1`,
//! `d[k] = v`) is invisible to static analysis: the mutated value's definer is not re-run and its
//! readers are not marked stale. Names created dynamically (`exec`, `globals()[...]`, `%run`,
//! star imports) are not known.
//!
//! # Shape
//! Getters ([`CellGraph::state`], [`CellGraph::bindings`], …), edits that return an [`Edit`],
//! run requests that return the planned order, the execution lifecycle
//! ([`CellGraph::start_run`], [`CellGraph::accept_output`], [`CellGraph::finish_run`],
//! [`CellGraph::interrupt`], [`CellGraph::kernel_lost`]), and [`CellGraph::poll_event`] for every
//! change of a cell's [`CellState`]. The driver sends [`Execution`]s to the kernel one at a time,
//! when the previous one has finished, so that a failure can still stop its dependents.
//!
//! Bindings are recomputed in full on every edit, and cells are found by a linear scan: both are
//! linear in the size of the notebook, which is small (hundreds of cells), and keep the state
//! obviously consistent. No graph library is needed: edges only point down the document.

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt;

use super::analysis::{self, Analysis, AnalysisError, CellContent, CellKind};
use crate::store::CellId;

/// The identity of one run of one cell. Epochs only grow, across all cells of the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch(u64);

impl Epoch {
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Whether running a cell also runs its descendants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExecutionMode {
    /// Running a cell runs its descendants; deleting or moving a cell re-runs the cells whose
    /// references it re-bound.
    #[default]
    Reactive,
    /// Running a cell (with any stale inputs it needs) only marks its descendants stale; edits
    /// never schedule anything.
    Lazy,
}

/// What a client shows on a cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CellState {
    /// Up to date (markdown and raw cells always are).
    Idle,
    /// Waiting to run.
    Queued,
    Running,
    /// Its outputs may not match its source and inputs any more.
    Stale,
    /// It cannot run, or its last run raised.
    Error(CellError),
}

/// Why a cell is in error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CellError {
    #[error(transparent)]
    Analysis(#[from] AnalysisError),
    /// `from m import *`: which names the cell defines cannot be known.
    #[error("`import *` from {} hides which names the cell defines; import the names you use", .modules.join(", "))]
    StarImport { modules: Vec<String> },
    /// The cell reads `name`, which only a cell below defines.
    #[error("`{name}` is defined only below this cell, by cell {cell}; move that cell up")]
    DefinedBelow { name: String, cell: CellId },
    /// The cell reads `name`, which the nearest cell above that touches it deletes.
    #[error("`{name}` is deleted above this cell, by cell {cell}")]
    DeletedAbove { name: String, cell: CellId },
    /// The last run raised an exception (the outputs say which).
    #[error("the last run raised an error")]
    Failed,
}

/// A reference of a cell and the cell it binds to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub name: String,
    /// The nearest cell above that defines `name`.
    pub cell: CellId,
}

/// What an edit changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Edit {
    /// Cells marked stale by the edit, in document order (queued and running ones included).
    pub stale: Vec<CellId>,
    /// Cells whose references now bind to different cells, in document order.
    pub rebound: Vec<CellId>,
    /// Globals no cell defines any more: the driver deletes them from the kernel.
    pub undefined: Vec<String>,
    /// The run order planned because of the edit (reactive mode, deletes and moves only).
    pub queued: Vec<CellId>,
}

/// A run the driver sends to the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Execution {
    pub cell: CellId,
    pub epoch: Epoch,
    /// The Python to execute: the cell's text, or the generated code of a SQL cell.
    pub code: String,
    /// Globals to `del` from the kernel first: the previous run of this cell defined them and no
    /// cell defines them any more.
    pub delete_first: Vec<String>,
}

/// How a run ended, from the kernel's execute reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    Completed,
    /// The cell raised. Its queued descendants are taken off the queue.
    Failed,
}

/// A change the driver forwards to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GraphEvent {
    StateChanged { cell: CellId, state: CellState },
}

/// A request the graph refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    #[error("no cell {0} in the document")]
    UnknownCell(CellId),
    #[error("cell {0} is already in the document")]
    DuplicateCell(CellId),
    #[error("position {index} is out of range for a document of {len} cells")]
    OutOfRange { index: usize, len: usize },
    #[error("cell {cell} is a {kind} cell, which does not run")]
    NotCode { cell: CellId, kind: CellKind },
    #[error("cell {cell} cannot run: {reason}")]
    Blocked {
        cell: CellId,
        #[source]
        reason: CellError,
    },
    #[error("cell {cell} cannot run: it needs cell {ancestor}, which cannot run: {reason}")]
    AncestorBlocked {
        cell: CellId,
        ancestor: CellId,
        #[source]
        reason: CellError,
    },
}

/// A cell's run status, apart from static errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Idle,
    Queued,
    Running,
    Stale,
    Failed,
}

#[derive(Debug)]
struct Node {
    id: CellId,
    content: CellContent,
    analysis: Result<Analysis, AnalysisError>,
    /// Resolved references, sorted by name.
    bindings: Vec<Binding>,
    /// Static errors: the cell does not run while there are any.
    problems: Vec<CellError>,
    status: Status,
    /// The epoch whose outputs are accepted.
    epoch: Option<Epoch>,
    /// What the cell defined when it last started: its leftovers in the kernel.
    ran_defs: BTreeSet<String>,
    /// The source or inputs changed while running: stale once it finishes.
    stale_on_finish: bool,
    /// Run requested while running: queued again once it finishes.
    run_again: bool,
}

impl Node {
    fn new(id: CellId, content: CellContent) -> Self {
        let analysis = analysis::analyze(&content);
        let status = if content.kind.runs() {
            Status::Stale
        } else {
            Status::Idle
        };
        Self {
            id,
            content,
            analysis,
            bindings: Vec::new(),
            problems: Vec::new(),
            status,
            epoch: None,
            ran_defs: BTreeSet::new(),
            stale_on_finish: false,
            run_again: false,
        }
    }

    fn runs(&self) -> bool {
        self.content.kind.runs()
    }

    fn defs(&self) -> Option<&BTreeSet<String>> {
        match &self.analysis {
            Ok(analysis) if self.runs() => Some(&analysis.defs),
            _ => None,
        }
    }

    fn deletes(&self) -> Option<&BTreeSet<String>> {
        match &self.analysis {
            Ok(analysis) if self.runs() => Some(&analysis.deletes),
            _ => None,
        }
    }

    fn state(&self) -> CellState {
        if !self.runs() {
            return CellState::Idle;
        }
        match (self.status, self.problems.first()) {
            (Status::Running, _) => CellState::Running,
            (_, Some(problem)) => CellState::Error(problem.clone()),
            (Status::Idle, None) => CellState::Idle,
            (Status::Queued, None) => CellState::Queued,
            (Status::Stale, None) => CellState::Stale,
            (Status::Failed, None) => CellState::Error(CellError::Failed),
        }
    }

    /// Marks the cell stale because its source or inputs changed.
    fn make_stale(&mut self) {
        match self.status {
            Status::Running => self.stale_on_finish = true,
            Status::Idle | Status::Failed => self.status = Status::Stale,
            Status::Queued | Status::Stale => {}
        }
    }
}

/// Scheduling state, real or simulated: every cell's status by position, and which cell's
/// value of each global the kernel holds.
#[derive(Debug, Clone)]
struct Sched {
    status: Vec<Status>,
    holders: HashMap<String, CellId>,
}

/// A queued cell taken off the queue because a cell it needs cannot run.
#[derive(Debug)]
struct Dropped {
    cell: usize,
    /// The cell that cannot run (the dropped cell itself for its own static error).
    blocker: usize,
    reason: CellError,
}

/// The reactive graph of one document. See the module documentation for the semantics.
#[derive(Debug)]
pub struct CellGraph {
    cells: Vec<Node>,
    mode: ExecutionMode,
    /// The next epoch to hand out.
    next_epoch: u64,
    /// For each global the kernel holds, the cell whose run last wrote it.
    holders: HashMap<String, CellId>,
    events: VecDeque<GraphEvent>,
}

impl CellGraph {
    pub fn new(mode: ExecutionMode) -> Self {
        Self {
            cells: Vec::new(),
            mode,
            next_epoch: 1,
            holders: HashMap::new(),
            events: VecDeque::new(),
        }
    }

    // ---- Getters ----

    pub fn mode(&self) -> ExecutionMode {
        self.mode
    }

    /// Switching modes schedules nothing by itself.
    pub fn set_mode(&mut self, mode: ExecutionMode) {
        self.mode = mode;
    }

    pub fn len(&self) -> usize {
        self.cells.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// The cells in document order.
    pub fn cell_ids(&self) -> impl Iterator<Item = &CellId> {
        self.cells.iter().map(|node| &node.id)
    }

    pub fn state(&self, cell: &CellId) -> Option<CellState> {
        self.node(cell).map(Node::state)
    }

    pub fn content(&self, cell: &CellId) -> Option<&CellContent> {
        self.node(cell).map(|node| &node.content)
    }

    pub fn analysis(&self, cell: &CellId) -> Option<&Result<Analysis, AnalysisError>> {
        self.node(cell).map(|node| &node.analysis)
    }

    /// The cell's references that bind to a cell above, sorted by name.
    pub fn bindings(&self, cell: &CellId) -> Option<&[Binding]> {
        self.node(cell).map(|node| node.bindings.as_slice())
    }

    /// Every static error of the cell (its state shows the first).
    pub fn problems(&self, cell: &CellId) -> Option<&[CellError]> {
        self.node(cell).map(|node| node.problems.as_slice())
    }

    /// The epoch whose outputs the cell accepts, if any.
    pub fn epoch(&self, cell: &CellId) -> Option<Epoch> {
        self.node(cell).and_then(|node| node.epoch)
    }

    /// The cells that read a name from `cell`, in document order.
    pub fn dependents(&self, cell: &CellId) -> Result<Vec<CellId>, GraphError> {
        let index = self.index_of(cell)?;
        Ok(self.cells[index + 1..]
            .iter()
            .filter(|node| node.bindings.iter().any(|b| b.cell == *cell))
            .map(|node| node.id.clone())
            .collect())
    }

    /// The cells that depend on `cell`, directly or not, in document order.
    pub fn descendants(&self, cell: &CellId) -> Result<Vec<CellId>, GraphError> {
        let index = self.index_of(cell)?;
        Ok(self.ids(&self.descendants_of(&BTreeSet::from([index]))))
    }

    /// Whether an output stamped with `epoch` belongs to the cell's latest run.
    pub fn accept_output(&self, cell: &CellId, epoch: Epoch) -> bool {
        self.node(cell)
            .is_some_and(|node| node.epoch == Some(epoch))
    }

    /// The next change of a cell's state, oldest first.
    pub fn poll_event(&mut self) -> Option<GraphEvent> {
        self.events.pop_front()
    }

    // ---- Edits ----

    /// Inserts a cell at `index` (0 ..= len). A new code cell is stale; nothing runs.
    pub fn insert_cell(
        &mut self,
        index: usize,
        id: CellId,
        content: CellContent,
    ) -> Result<Edit, GraphError> {
        if index > self.cells.len() {
            return Err(GraphError::OutOfRange {
                index,
                len: self.cells.len(),
            });
        }
        if self.node(&id).is_some() {
            return Err(GraphError::DuplicateCell(id));
        }
        let before = self.snapshot();
        let new_cell = content.kind.runs().then(|| id.clone());
        self.cells.insert(index, Node::new(id, content));
        self.rebind();
        let rebound = self.rebound_since(&before);
        let mut stale = self.closure(&rebound);
        stale.extend(new_cell);
        Ok(self.finish_edit(&before, stale, rebound, Vec::new(), false))
    }

    /// Replaces a cell's content (source, kind or result name): re-analyses it and marks it and
    /// its descendants (before and after the change) stale at once. Nothing runs.
    pub fn set_source(&mut self, cell: &CellId, content: CellContent) -> Result<Edit, GraphError> {
        let index = self.index_of(cell)?;
        if self.cells[index].content == content {
            return Ok(Edit::default());
        }
        let before = self.snapshot();
        let old_descendants = self.ids(&self.descendants_of(&BTreeSet::from([index])));
        let node = &mut self.cells[index];
        let was_code = node.runs();
        node.analysis = analysis::analyze(&content);
        node.content = content;
        if !node.runs() {
            if node.status != Status::Running {
                node.status = Status::Idle;
            }
        } else if !was_code {
            node.status = Status::Stale;
        }
        self.rebind();
        let rebound = self.rebound_since(&before);
        let mut changed = rebound.clone();
        changed.push(cell.clone());
        let mut stale = self.closure(&changed);
        stale.extend(old_descendants);
        stale.insert(cell.clone());
        Ok(self.finish_edit(&before, stale, rebound, Vec::new(), false))
    }

    /// Moves a cell to `to` (its index after the move). The cells whose references now bind
    /// elsewhere are marked stale, with their descendants; in reactive mode those that were up
    /// to date re-run.
    pub fn move_cell(&mut self, cell: &CellId, to: usize) -> Result<Edit, GraphError> {
        let index = self.index_of(cell)?;
        if to >= self.cells.len() {
            return Err(GraphError::OutOfRange {
                index: to,
                len: self.cells.len(),
            });
        }
        if to == index {
            return Ok(Edit::default());
        }
        let before = self.snapshot();
        let node = self.cells.remove(index);
        self.cells.insert(to, node);
        self.rebind();
        let rebound = self.rebound_since(&before);
        let stale = self.closure(&rebound);
        Ok(self.finish_edit(&before, stale, rebound, Vec::new(), true))
    }

    /// Deletes a cell. Its dependents re-bind (to the next definer above, or to nothing); the
    /// globals it defined that no cell defines any more are in [`Edit::undefined`].
    pub fn delete_cell(&mut self, cell: &CellId) -> Result<Edit, GraphError> {
        let index = self.index_of(cell)?;
        let before = self.snapshot();
        let node = self.cells.remove(index);
        self.rebind();
        let rebound = self.rebound_since(&before);
        let stale = self.closure(&rebound);

        let defined: HashSet<&String> =
            self.cells.iter().filter_map(Node::defs).flatten().collect();
        let mut candidates: BTreeSet<String> = node.ran_defs.clone();
        candidates.extend(node.defs().into_iter().flatten().cloned());
        candidates.extend(
            self.holders
                .iter()
                .filter(|(_, holder)| **holder == node.id)
                .map(|(name, _)| name.clone()),
        );
        let undefined: Vec<String> = candidates
            .into_iter()
            .filter(|name| !defined.contains(name))
            .collect();
        // The kernel's copy of anything the deleted cell wrote is no one's any more.
        self.holders.retain(|_, holder| *holder != node.id);
        Ok(self.finish_edit(&before, stale, rebound, undefined, true))
    }

    // ---- Run requests ----

    /// Queues `cell` and returns the order in which every queued cell will start: the stale
    /// ancestors it needs first, then the cell, then (reactive mode) its descendants.
    pub fn run(&mut self, cell: &CellId) -> Result<Vec<CellId>, GraphError> {
        let index = self.index_of(cell)?;
        let node = &self.cells[index];
        if !node.runs() {
            return Err(GraphError::NotCode {
                cell: cell.clone(),
                kind: node.content.kind,
            });
        }
        if let Some(reason) = node.problems.first() {
            return Err(GraphError::Blocked {
                cell: cell.clone(),
                reason: reason.clone(),
            });
        }
        let before = self.snapshot();
        let (order, dropped) = self.plan(&[index]);
        if !order.contains(&index)
            && let Some(dropped) = dropped.into_iter().find(|d| d.cell == index)
        {
            return Err(GraphError::AncestorBlocked {
                cell: cell.clone(),
                ancestor: self.cells[dropped.blocker].id.clone(),
                reason: dropped.reason,
            });
        }
        let order = self.enqueue(&order);
        self.emit(&before);
        Ok(order)
    }

    /// Queues every stale cell that can run; returns the planned order.
    pub fn run_stale(&mut self) -> Vec<CellId> {
        let stale: Vec<usize> = (0..self.cells.len())
            .filter(|&i| self.cells[i].runs() && self.cells[i].status == Status::Stale)
            .collect();
        self.schedule(&stale)
    }

    /// Queues every code and SQL cell in document order (after a kernel loss); returns the
    /// planned order. Cells that cannot run, and their descendants, are left out.
    pub fn replay(&mut self) -> Vec<CellId> {
        let all: Vec<usize> = (0..self.cells.len())
            .filter(|&i| self.cells[i].runs())
            .collect();
        self.schedule(&all)
    }

    // ---- Execution lifecycle ----

    /// Starts the next queued cell, if any: the driver sends the [`Execution`] to the kernel.
    /// Cells that cannot run any more (an input failed or became an error) leave the queue.
    pub fn start_run(&mut self) -> Option<Execution> {
        let before = self.snapshot();
        let mut sched = self.sched();
        let mut dropped = Vec::new();
        let next = self.next_start(&mut sched, &mut dropped);
        if let Some(index) = next {
            self.apply_start(&mut sched, index);
        }
        for (node, status) in self.cells.iter_mut().zip(&sched.status) {
            node.status = *status;
        }
        self.holders = sched.holders;
        let execution = next.map(|index| self.begin(index));
        self.emit(&before);
        execution
    }

    /// Records the end of a run. Returns false (and changes nothing) for a run that is not the
    /// cell's current one: a cancelled run, or a cell deleted meanwhile.
    pub fn finish_run(&mut self, cell: &CellId, epoch: Epoch, outcome: RunOutcome) -> bool {
        let Ok(index) = self.index_of(cell) else {
            return false;
        };
        let node = &self.cells[index];
        if node.status != Status::Running || node.epoch != Some(epoch) {
            return false;
        }
        let before = self.snapshot();
        if outcome == RunOutcome::Failed {
            for descendant in self.descendants_of(&BTreeSet::from([index])) {
                let node = &mut self.cells[descendant];
                if node.status == Status::Queued {
                    node.status = Status::Stale;
                }
            }
        }
        let node = &mut self.cells[index];
        node.status = match (node.stale_on_finish, outcome) {
            (true, _) => Status::Stale,
            (false, RunOutcome::Completed) => Status::Idle,
            (false, RunOutcome::Failed) => Status::Failed,
        };
        node.stale_on_finish = false;
        if std::mem::take(&mut node.run_again) {
            node.status = Status::Queued;
        }
        self.emit(&before);
        true
    }

    /// The kernel was interrupted: queued and running cells become stale and their outputs are
    /// dropped from now on. Returns the cancelled cells.
    pub fn interrupt(&mut self) -> Vec<CellId> {
        let before = self.snapshot();
        self.next_epoch += 1;
        let mut cancelled = Vec::new();
        for node in &mut self.cells {
            if matches!(node.status, Status::Queued | Status::Running) {
                node.status = Status::Stale;
                node.epoch = None;
                node.run_again = false;
                node.stale_on_finish = false;
                cancelled.push(node.id.clone());
            }
        }
        self.emit(&before);
        cancelled
    }

    /// The kernel is gone (crash, OOM kill, restart): every cell is stale, nothing is held,
    /// and outputs of any earlier run are dropped. Returns the cancelled (queued or running)
    /// cells. [`CellGraph::replay`] rebuilds the state.
    pub fn kernel_lost(&mut self) -> Vec<CellId> {
        let before = self.snapshot();
        self.next_epoch += 1;
        self.holders.clear();
        let mut cancelled = Vec::new();
        for node in &mut self.cells {
            if matches!(node.status, Status::Queued | Status::Running) {
                cancelled.push(node.id.clone());
            }
            if node.runs() {
                node.status = Status::Stale;
            }
            node.epoch = None;
            node.run_again = false;
            node.stale_on_finish = false;
            node.ran_defs.clear();
        }
        self.emit(&before);
        cancelled
    }

    // ---- Internals: lookup ----

    fn node(&self, cell: &CellId) -> Option<&Node> {
        self.cells.iter().find(|node| node.id == *cell)
    }

    fn index_of(&self, cell: &CellId) -> Result<usize, GraphError> {
        self.cells
            .iter()
            .position(|node| node.id == *cell)
            .ok_or_else(|| GraphError::UnknownCell(cell.clone()))
    }

    fn positions(&self) -> HashMap<&CellId, usize> {
        self.cells
            .iter()
            .enumerate()
            .map(|(index, node)| (&node.id, index))
            .collect()
    }

    fn ids(&self, indices: &BTreeSet<usize>) -> Vec<CellId> {
        indices.iter().map(|&i| self.cells[i].id.clone()).collect()
    }

    /// The descendants of `roots` (roots excluded unless they descend from another root).
    /// Edges point down, so one pass in document order finds them all.
    fn descendants_of(&self, roots: &BTreeSet<usize>) -> BTreeSet<usize> {
        let Some(&first) = roots.first() else {
            return BTreeSet::new();
        };
        let mut reached: HashSet<&CellId> = roots.iter().map(|&i| &self.cells[i].id).collect();
        let mut found = BTreeSet::new();
        for (index, node) in self.cells.iter().enumerate().skip(first + 1) {
            if node.bindings.iter().any(|b| reached.contains(&b.cell)) {
                reached.insert(&node.id);
                found.insert(index);
            }
        }
        found
    }

    /// `cells` and their descendants, as ids.
    fn closure(&self, cells: &[CellId]) -> BTreeSet<CellId> {
        let positions = self.positions();
        let roots: BTreeSet<usize> = cells
            .iter()
            .filter_map(|id| positions.get(id).copied())
            .collect();
        let mut all: BTreeSet<CellId> = cells.iter().cloned().collect();
        all.extend(self.ids(&self.descendants_of(&roots)));
        all
    }

    // ---- Internals: binding ----

    /// Recomputes every cell's bindings and static errors from the analyses and the order.
    fn rebind(&mut self) {
        // For each global, the cells that define (false) or delete (true) it, in order.
        let mut writers: HashMap<&str, Vec<(usize, bool)>> = HashMap::new();
        for (index, node) in self.cells.iter().enumerate() {
            for name in node.defs().into_iter().flatten() {
                writers.entry(name).or_default().push((index, false));
            }
            for name in node.deletes().into_iter().flatten() {
                writers.entry(name).or_default().push((index, true));
            }
        }
        let mut resolved = Vec::with_capacity(self.cells.len());
        for (index, node) in self.cells.iter().enumerate() {
            let mut bindings = Vec::new();
            let mut problems = Vec::new();
            if node.runs() {
                match &node.analysis {
                    Err(error) => problems.push(CellError::Analysis(error.clone())),
                    Ok(analysis) => {
                        if !analysis.star_imports.is_empty() {
                            problems.push(CellError::StarImport {
                                modules: analysis.star_imports.clone(),
                            });
                        }
                        let names = analysis
                            .refs
                            .iter()
                            .map(|name| (name, false))
                            .chain(analysis.builtin_refs.iter().map(|name| (name, true)));
                        for (name, builtin) in names {
                            let cells = writers.get(name.as_str()).map_or(&[][..], Vec::as_slice);
                            let above = cells.iter().rev().find(|(at, _)| *at < index);
                            match above {
                                Some(&(at, false)) => bindings.push(Binding {
                                    name: name.clone(),
                                    cell: self.cells[at].id.clone(),
                                }),
                                Some(&(at, true)) if !builtin => {
                                    problems.push(CellError::DeletedAbove {
                                        name: name.clone(),
                                        cell: self.cells[at].id.clone(),
                                    });
                                }
                                Some(_) => {}
                                None if builtin => {}
                                None => {
                                    if let Some(&(at, _)) =
                                        cells.iter().find(|(at, delete)| *at > index && !delete)
                                    {
                                        problems.push(CellError::DefinedBelow {
                                            name: name.clone(),
                                            cell: self.cells[at].id.clone(),
                                        });
                                    }
                                }
                            }
                        }
                    }
                }
            }
            bindings.sort_by(|a, b| a.name.cmp(&b.name));
            resolved.push((bindings, problems));
        }
        for (node, (bindings, problems)) in self.cells.iter_mut().zip(resolved) {
            node.bindings = bindings;
            node.problems = problems;
        }
    }

    // ---- Internals: edits ----

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            cells: self
                .cells
                .iter()
                .map(|node| {
                    (
                        node.id.clone(),
                        Before {
                            state: node.state(),
                            status: node.status,
                            bindings: node.bindings.clone(),
                        },
                    )
                })
                .collect(),
        }
    }

    /// Cells present before and after whose bindings changed, in document order.
    fn rebound_since(&self, before: &Snapshot) -> Vec<CellId> {
        self.cells
            .iter()
            .filter(|node| {
                before
                    .cells
                    .get(&node.id)
                    .is_some_and(|old| old.bindings != node.bindings)
            })
            .map(|node| node.id.clone())
            .collect()
    }

    /// Marks `stale`, re-runs re-bound up-to-date cells (reactive mode, when `reruns`), and
    /// reports the edit.
    fn finish_edit(
        &mut self,
        before: &Snapshot,
        stale: BTreeSet<CellId>,
        rebound: Vec<CellId>,
        undefined: Vec<String>,
        reruns: bool,
    ) -> Edit {
        let mut stale_positions = Vec::new();
        for (index, node) in self.cells.iter_mut().enumerate() {
            if node.runs() && stale.contains(&node.id) {
                node.make_stale();
                stale_positions.push(index);
            }
        }
        let mut queued = Vec::new();
        if reruns && self.mode == ExecutionMode::Reactive {
            let positions = self.positions();
            let rerun: Vec<usize> = rebound
                .iter()
                .filter(|id| {
                    before
                        .cells
                        .get(*id)
                        .is_some_and(|old| old.status == Status::Idle)
                })
                .filter_map(|id| positions.get(id).copied())
                .collect();
            if !rerun.is_empty() {
                let (order, _) = self.plan(&rerun);
                queued = self.enqueue(&order);
            }
        }
        self.emit(before);
        Edit {
            stale: self.ids(&stale_positions.into_iter().collect()),
            rebound,
            undefined,
            queued,
        }
    }

    /// Queues `requested` (and descendants in reactive mode), skipping cells that cannot run.
    fn schedule(&mut self, requested: &[usize]) -> Vec<CellId> {
        let before = self.snapshot();
        let (order, _) = self.plan(requested);
        let order = self.enqueue(&order);
        self.emit(&before);
        order
    }

    // ---- Internals: scheduling ----

    /// The real scheduling state.
    fn sched(&self) -> Sched {
        Sched {
            status: self.cells.iter().map(|node| node.status).collect(),
            holders: self.holders.clone(),
        }
    }

    /// Plans a run of `requested` on top of the current queue, without changing anything:
    /// returns the order in which cells would start if every run completed, and the requested
    /// cells that could not be queued and why.
    ///
    /// The simulation starts queued cells in document order, pulling in the inputs they need.
    /// Pulled cells are then queued from the start and the simulation repeated, until it pulls
    /// nothing: the final order is in document order, each cell once.
    fn plan(&self, requested: &[usize]) -> (Vec<usize>, Vec<Dropped>) {
        let mut initial = self.sched();
        // Running cells are assumed to complete; those asked to run again are queued. A cell
        // whose last run failed is asked for again: it is retried when something needs it.
        for (status, node) in initial.status.iter_mut().zip(&self.cells) {
            match *status {
                Status::Running if node.run_again => *status = Status::Queued,
                Status::Running => *status = Status::Idle,
                Status::Failed => *status = Status::Stale,
                _ => {}
            }
        }
        let mut wanted: BTreeSet<usize> = requested.iter().copied().collect();
        if self.mode == ExecutionMode::Reactive {
            let descendants = self.descendants_of(&wanted);
            wanted.extend(descendants);
        }
        for &index in &wanted {
            let node = &self.cells[index];
            if node.runs() && node.problems.is_empty() {
                initial.status[index] = Status::Queued;
            }
        }
        loop {
            let mut sched = initial.clone();
            let mut order = Vec::new();
            let mut dropped = Vec::new();
            while let Some(index) = self.next_start(&mut sched, &mut dropped) {
                self.apply_start(&mut sched, index);
                sched.status[index] = Status::Idle;
                order.push(index);
            }
            let pulled: Vec<usize> = order
                .iter()
                .copied()
                .filter(|&index| initial.status[index] != Status::Queued)
                .collect();
            if pulled.is_empty() {
                return (order, dropped);
            }
            for index in pulled {
                initial.status[index] = Status::Queued;
            }
        }
    }

    /// Marks the cells of a plan queued for real; returns their ids in order.
    fn enqueue(&mut self, order: &[usize]) -> Vec<CellId> {
        for &index in order {
            let node = &mut self.cells[index];
            match node.status {
                Status::Running => node.run_again = true,
                _ => node.status = Status::Queued,
            }
        }
        order.iter().map(|&i| self.cells[i].id.clone()).collect()
    }

    /// The first queued cell (in document order) whose inputs are all up to date in the kernel.
    /// Inputs that are not get queued (they are above, so they come first); queued cells that
    /// cannot run leave the queue with their queued descendants.
    fn next_start(&self, sched: &mut Sched, dropped: &mut Vec<Dropped>) -> Option<usize> {
        let positions = self.positions();
        loop {
            let index = sched.status.iter().position(|s| *s == Status::Queued)?;
            let node = &self.cells[index];
            let mut blocker = node.problems.first().map(|reason| (index, reason.clone()));
            let mut pulled = false;
            for binding in &node.bindings {
                if blocker.is_some() {
                    break;
                }
                let Some(&parent) = positions.get(&binding.cell) else {
                    continue;
                };
                let parent_node = &self.cells[parent];
                if let Some(reason) = parent_node.problems.first() {
                    blocker = Some((parent, reason.clone()));
                    break;
                }
                match sched.status[parent] {
                    Status::Queued | Status::Running => {}
                    Status::Failed => blocker = Some((parent, CellError::Failed)),
                    Status::Idle if sched.holders.get(&binding.name) == Some(&parent_node.id) => {}
                    Status::Idle | Status::Stale => {
                        sched.status[parent] = Status::Queued;
                        pulled = true;
                    }
                }
            }
            if let Some((blocker, reason)) = blocker {
                sched.status[index] = Status::Stale;
                for descendant in self.descendants_of(&BTreeSet::from([index])) {
                    if sched.status[descendant] == Status::Queued {
                        sched.status[descendant] = Status::Stale;
                        dropped.push(Dropped {
                            cell: descendant,
                            blocker,
                            reason: reason.clone(),
                        });
                    }
                }
                dropped.push(Dropped {
                    cell: index,
                    blocker,
                    reason,
                });
                continue;
            }
            if !pulled {
                return Some(index);
            }
        }
    }

    /// The effects of starting `index` on the scheduling state: it runs, it writes its globals,
    /// and its descendants that are not queued become stale.
    fn apply_start(&self, sched: &mut Sched, index: usize) {
        let node = &self.cells[index];
        sched.status[index] = Status::Running;
        for name in node.defs().into_iter().flatten() {
            sched.holders.insert(name.clone(), node.id.clone());
        }
        for name in node.deletes().into_iter().flatten() {
            sched.holders.remove(name);
        }
        for descendant in self.descendants_of(&BTreeSet::from([index])) {
            if matches!(sched.status[descendant], Status::Idle | Status::Failed) {
                sched.status[descendant] = Status::Stale;
            }
        }
    }

    /// Hands out the epoch and code of a run that just started.
    fn begin(&mut self, index: usize) -> Execution {
        let defined: HashSet<String> = self
            .cells
            .iter()
            .filter_map(Node::defs)
            .flatten()
            .cloned()
            .collect();
        let epoch = Epoch(self.next_epoch);
        self.next_epoch += 1;
        let node = &mut self.cells[index];
        node.epoch = Some(epoch);
        node.run_again = false;
        node.stale_on_finish = false;
        let delete_first: Vec<String> = node
            .ran_defs
            .iter()
            .filter(|name| !defined.contains(*name))
            .cloned()
            .collect();
        node.ran_defs = node.defs().cloned().unwrap_or_default();
        let code = match &node.analysis {
            Ok(Analysis {
                kernel_source: Some(code),
                ..
            }) => code.clone(),
            _ => node.content.source.clone(),
        };
        let execution = Execution {
            cell: node.id.clone(),
            epoch,
            code,
            delete_first,
        };
        for name in &execution.delete_first {
            self.holders.remove(name);
        }
        execution
    }

    /// Queues an event for every cell whose state differs from `before`.
    fn emit(&mut self, before: &Snapshot) {
        for node in &self.cells {
            let state = node.state();
            if before.cells.get(&node.id).map(|old| &old.state) != Some(&state) {
                self.events.push_back(GraphEvent::StateChanged {
                    cell: node.id.clone(),
                    state,
                });
            }
        }
    }
}

impl Default for CellGraph {
    fn default() -> Self {
        Self::new(ExecutionMode::default())
    }
}

/// Each cell's state before a command, to report what changed.
#[derive(Debug)]
struct Snapshot {
    cells: BTreeMap<CellId, Before>,
}

#[derive(Debug)]
struct Before {
    state: CellState,
    status: Status,
    bindings: Vec<Binding>,
}
