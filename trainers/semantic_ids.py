"""Semantic-id items: a prefix trie of the valid codes and beam search constrained to it.

With semantic ids (TIGER, Rajput et al. 2023) each item is a short code of D tokens, and a
generative recommender emits an item token by token. Decoding must stay on valid codes: at every
step only the tokens that extend the current prefix to some item's code are allowed (ReRe,
arXiv 2510.12211, decodes this way). `PrefixTrie` holds the valid codes as tensors (no Python
per-node objects, so masks for thousands of beams are one lookup); `constrained_beam_search` runs
beam search of width W over any next-token model and returns W distinct valid items per row.

`policy_step_log_probs` gives the token model implied by an item-level policy π(item | s) (such as
`SequentialRecommender`): the probability of a prefix is the mass of the items below it, so token
t's conditional is mass(prefix + t) / mass(prefix), and the beam's score after the last token is
exactly log π(item | s).

Item ids follow the trainers' convention: items 1..n_items, 0 = padding; row i of the code table
is the code of item i + 1.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# Next-token log-probabilities of each beam: (tokens [B, W, t] so far, trie nodes [B, W]) ->
# [B, W, vocab_size]. A decoder reads the tokens; an item-level policy reads the nodes.
StepFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class PrefixTrie:
    """The valid codes of a catalog. Node 0 is the root (the empty prefix); every distinct prefix
    of a code is one node; the nodes at depth D are the items' codes (leaves).

    codes: LongTensor[n_items, D] with tokens in 0..vocab_size - 1 (default: the largest + 1);
    two items with the same code are refused (a code must name its item; real semantic ids
    append a disambiguating token).
    """

    def __init__(self, codes: torch.Tensor, vocab_size: int | None = None) -> None:
        codes = torch.as_tensor(codes).long()
        if codes.dim() != 2 or codes.shape[0] < 1 or codes.shape[1] < 1:
            raise ValueError(f"codes must be [n_items, D] with n_items, D >= 1, got "
                             f"{tuple(codes.shape)}")
        if bool((codes < 0).any()):
            raise ValueError("code tokens must be >= 0")
        self.vocab_size = int(codes.max()) + 1 if vocab_size is None else vocab_size
        if self.vocab_size <= int(codes.max()):
            raise ValueError(
                f"vocab_size {self.vocab_size} does not cover token {int(codes.max())}"
            )
        n_items, depth = codes.shape
        if torch.unique(codes, dim=0).shape[0] != n_items:
            raise ValueError("two items share a code; semantic ids must be unique per item")
        self.codes = codes
        self.depth = depth
        # item_nodes[i, t]: the node of item i + 1's prefix of length t (column 0 is the root).
        item_nodes = torch.zeros(n_items, depth + 1, dtype=torch.long)
        n_nodes = 1
        for t in range(1, depth + 1):
            _, inverse = torch.unique(codes[:, :t], dim=0, return_inverse=True)
            item_nodes[:, t] = n_nodes + inverse
            n_nodes += int(inverse.max()) + 1
        self.item_nodes = item_nodes
        self.n_nodes = n_nodes
        # Edges (parent, token) -> child, sorted by the key parent * vocab_size + token.
        parents = item_nodes[:, :-1].flatten()
        children = item_nodes[:, 1:].flatten()
        keys = parents * self.vocab_size + codes.flatten()
        keys, edge = torch.unique(keys, return_inverse=True)
        child = torch.empty(keys.shape[0], dtype=torch.long)
        child[edge] = children  # items sharing a prefix write the same child
        self._edge_keys, self._edge_children = keys, child
        self._leaf_item = torch.zeros(n_nodes, dtype=torch.long)  # 0 for inner nodes
        self._leaf_item[item_nodes[:, -1]] = torch.arange(1, n_items + 1)

    @property
    def n_items(self) -> int:
        return int(self.codes.shape[0])

    def children(self, nodes: torch.Tensor) -> torch.Tensor:
        """Child node of each node for every token [..., vocab_size]; −1 where the token would
        leave the valid codes (and for nodes < 0, which stand for dead beams)."""
        tokens = torch.arange(self.vocab_size, device=nodes.device)
        return self.step(nodes[..., None], tokens)

    def step(self, nodes: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The node reached from `nodes` by `tokens` (broadcast), −1 where that is no prefix."""
        edge_keys = self._edge_keys.to(nodes.device)
        keys = nodes * self.vocab_size + tokens
        position = torch.searchsorted(edge_keys, keys).clamp(max=edge_keys.shape[0] - 1)
        found = (edge_keys[position] == keys) & (nodes >= 0) & (tokens >= 0)
        found &= tokens < self.vocab_size
        return torch.where(found, self._edge_children.to(nodes.device)[position], -1)

    def allowed(self, nodes: torch.Tensor) -> torch.Tensor:
        """Which next tokens keep each prefix valid: BoolTensor[..., vocab_size]."""
        return self.children(nodes) >= 0

    def items_at(self, nodes: torch.Tensor) -> torch.Tensor:
        """Item id of each leaf node; 0 for inner nodes and dead beams (node < 0)."""
        leaf_item = self._leaf_item.to(nodes.device)
        return torch.where(nodes >= 0, leaf_item[nodes.clamp(min=0)], 0)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Item id of each code [..., D]; 0 where the code is not in the trie."""
        node = torch.zeros(codes.shape[:-1], dtype=torch.long, device=codes.device)
        for t in range(codes.shape[-1]):
            node = self.step(node, codes[..., t])
        return self.items_at(node) if codes.shape[-1] == self.depth else torch.zeros_like(node)

    def subtree_log_mass(self, log_policy: torch.Tensor) -> torch.Tensor:
        """log Σ π(item) over the items below each node [B, n_nodes], from log π [B, n_items+1]
        (column 0, padding, is ignored)."""
        item_log_prob = log_policy[:, 1:]
        batch = item_log_prob.shape[0]
        nodes = self.item_nodes.to(log_policy.device).T.flatten()  # depth-major
        values = item_log_prob.repeat(1, self.depth + 1)
        peak = torch.full((batch, self.n_nodes), float("-inf"), device=log_policy.device)
        peak = peak.scatter_reduce(1, nodes.expand(batch, -1), values, "amax")
        peak = torch.where(torch.isfinite(peak), peak, 0.0)  # subtrees of zero mass stay −inf
        shifted = (values - peak.gather(1, nodes.expand(batch, -1))).exp()
        total = torch.zeros(batch, self.n_nodes, device=log_policy.device)
        total = total.index_add(1, nodes, shifted)
        return total.log() + peak


def policy_step_log_probs(trie: PrefixTrie, log_policy: torch.Tensor) -> StepFn:
    """The next-token model of an item-level policy: log mass(prefix + t) − log mass(prefix)."""
    node_log_mass = trie.subtree_log_mass(log_policy)  # [B, n_nodes]

    def step(tokens: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        batch, width = nodes.shape
        children = trie.children(nodes)  # [B, W, V]
        rows = torch.arange(batch, device=nodes.device)[:, None, None]
        child_mass = node_log_mass[rows, children.clamp(min=0)]
        parent_mass = node_log_mass[rows[:, :, 0], nodes.clamp(min=0)][..., None]
        # A child of finite mass has a parent of finite mass, so no −inf − (−inf) = NaN remains.
        usable = (children >= 0) & torch.isfinite(child_mass)
        return torch.where(usable, child_mass - parent_mass, float("-inf"))

    return step


def constrained_beam_search(
    step_log_probs: StepFn, trie: PrefixTrie, batch_size: int, beam_width: int,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Beam search of width W over codes, only ever extending prefixes of valid codes.

    Returns (items [B, W], scores [B, W]), best first: W distinct items per row (fewer real ones
    only when fewer than W items have a finite score; the rest are item 0 with score −inf), each
    score the sum of its tokens' log-probabilities. Invalid tokens are masked before the top-W
    choice at every step, so no beam ever leaves the trie.
    """
    if beam_width < 1:
        raise ValueError(f"beam_width must be >= 1, got {beam_width}")
    nodes = torch.zeros(batch_size, beam_width, dtype=torch.long, device=device)
    scores = torch.full((batch_size, beam_width), float("-inf"), device=device)
    scores[:, 0] = 0.0  # one live beam at the root; the others start dead
    tokens = torch.zeros(batch_size, beam_width, 0, dtype=torch.long, device=device)
    vocab = trie.vocab_size
    for _ in range(trie.depth):
        log_probs = step_log_probs(tokens, nodes).float()
        children = trie.children(nodes)
        candidate = scores[..., None] + log_probs.masked_fill(children < 0, float("-inf"))
        candidate = candidate.nan_to_num(float("-inf"), neginf=float("-inf"))  # NaN wins topk
        scores, flat = candidate.flatten(1).topk(beam_width, dim=1)
        beam, token = flat // vocab, flat % vocab
        nodes = children.flatten(1).gather(1, flat)
        nodes = torch.where(torch.isfinite(scores), nodes, -1)
        tokens = torch.cat([tokens.gather(1, beam[..., None].expand(-1, -1, tokens.shape[2])),
                            token[..., None]], dim=2)
    return trie.items_at(nodes), scores
