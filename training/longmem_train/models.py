"""Recommenders, each with a `full` graph (item window -> scores) and a `step` graph (stored state +
one new item -> new state + scores), sharing weights.

- `SASRec`: causal self-attention (the SASRec architecture) with two changes that make an exact
  key/value cache possible: positions enter as an ALiBi recency bias instead of absolute position
  embeddings, and each layer attends to the last `span` positions only (sliding-window attention).
  The cache then holds, per layer, the keys and values of the last `span - 1` items, and `full` over
  the last `layers * (span - 1) + 1` items equals `step` over the whole history, exactly.
- `MemoryRec`: a short attention window plus per-user memory slots updated by every event (see
  its docstring); the state is the window's key/value cache and the slots.
- `GRU4Rec`: a GRU over the item sequence; the state is the hidden vector. `full` runs the same
  cell over the window (left padding leaves the state untouched), so `step` over the same items
  gives the same state.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def item_embedding(n_items, dim):
    """Item embeddings: the input table, and the output one unless a model has its own. A small init
    matters: with nn.Embedding's N(0, 1) and the input scaled by sqrt(dim), initial logits are in the
    tens, the softmax saturates and training crawls (measured on ML-100k: validation HR@10 0.015 vs
    0.13 after 8 epochs)."""
    emb = nn.Embedding(n_items + 1, dim, padding_idx=0)
    nn.init.normal_(emb.weight, std=0.02)
    with torch.no_grad():
        emb.weight[0].zero_()
    return emb


def output_embedding(model):
    """The table items are scored with: the input embeddings (tied, the default) or, with
    `separate_output`, a table of its own (as gSASRec's reference implementation scores)."""
    return model.out_emb if model.out_emb is not None else model.item_emb


def alibi_slopes(heads):
    return torch.tensor([2 ** (-8 * (h + 1) / heads) for h in range(heads)])


class Block(nn.Module):
    def __init__(self, dim, heads, dropout):
        super().__init__()
        self.heads, self.dh = heads, dim // heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim))
        self.drop = nn.Dropout(dropout)

    def split(self, t):  # [B, T, D] -> [B, H, T, dh]
        return t.unflatten(-1, (self.heads, self.dh)).transpose(1, 2)

    def attend(self, q, k, v, bias):
        att = (q @ k.transpose(-1, -2)) / math.sqrt(self.dh) + bias
        att = self.drop(torch.softmax(att, dim=-1))
        out = att @ v  # [B, H, Tq, dh]
        return self.out(out.transpose(1, 2).flatten(2))

    def forward(self, x, bias, keep_kv=False):
        q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)
        k, v = self.split(k), self.split(v)
        x = x + self.drop(self.attend(self.split(q), k, v, bias))
        x = x + self.drop(self.ff(self.ln2(x)))
        return (x, k, v) if keep_kv else x

    def keys_values(self, h):
        """Keys and values of the normed input h [B, T, D], without the queries."""
        d = h.shape[-1]
        k, v = F.linear(h, self.qkv.weight[d:], self.qkv.bias[d:]).chunk(2, dim=-1)
        return self.split(k), self.split(v)

    def last_outputs(self, x, h, k, v, bias, n):
        """The outputs of the last n positions only, given the keys and values of every position
        of x (h = ln1(x)); bias [.., n, T]."""
        d = x.shape[-1]
        q = F.linear(h[:, -n:], self.qkv.weight[:d], self.qkv.bias[:d])
        y = x[:, -n:] + self.attend(self.split(q), k, v, bias)
        return y + self.ff(self.ln2(y))

    def step(self, x, k_cache, v_cache, bias):
        """x [B, 1, D]; caches [B, H, S-1, dh], or one [B, S-1, dh] per head (a list). Returns the
        output and this layer's new k, v [B, H, 1, dh]."""
        q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)
        q, k, v = self.split(q), self.split(k), self.split(v)
        if isinstance(k_cache, (list, tuple)):
            out = torch.cat([step_attention(q[:, h], k_cache[h], v_cache[h], k[:, h], v[:, h], bias[:, h], self.dh)
                             for h in range(self.heads)], dim=-1)                        # [B, 1, D]
        else:
            out = step_attention(q, k_cache, v_cache, k, v, bias, self.dh).transpose(1, 2).flatten(2)
        x = x + self.out(out)
        return x + self.ff(self.ln2(x)), k, v


def step_attention(q, k_cache, v_cache, k, v, bias, dh):
    """One query's attention over the cached keys and its own, without appending its own to the
    cache: the two meet only in the S scores, so the step graph copies no cache (concatenating the
    caches was a seventh of sasrec-ml100k's step graph). q, k, v [..., 1, dh]; caches [..., S-1, dh];
    bias [..., 1, S], the cache's columns first."""
    own = (q * k).sum(-1, keepdim=True)         # as a batched MatMul, 1 x dh by dh x 1, it was 3% of the graph
    att = torch.cat([q @ k_cache.transpose(-1, -2), own], dim=-1) / math.sqrt(dh) + bias
    att = torch.softmax(att, dim=-1)
    return att[..., :-1] @ v_cache + att[..., -1:] * v


class SASRec(nn.Module):
    kind = "sasrec"

    def __init__(self, n_items, window=50, dim=64, layers=2, heads=2, span=25, dropout=0.2, separate_output=False,
                 positions="alibi", **_):
        super().__init__()
        # `positions="learned"` is the original SASRec, for the ablation only: absolute position
        # embeddings and attention over the whole window. Its hidden state depends on where each item
        # sits in the window, so no cache can be stepped exactly: it exports a full graph only.
        self.exact_step = positions == "alibi"
        if not self.exact_step:
            span = window
        assert not self.exact_step or window >= layers * (span - 1) + 1, "the window must cover every layer's span"
        self.n_items, self.window, self.dim, self.layers, self.heads, self.span = n_items, window, dim, layers, heads, span
        self.item_emb = item_embedding(n_items, dim)
        self.out_emb = item_embedding(n_items, dim) if separate_output else None
        self.pos_emb = None if self.exact_step else nn.Embedding(window, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        slopes = alibi_slopes(heads) if self.exact_step else torch.zeros(heads)  # zero slopes: no recency bias
        self.register_buffer("slopes", slopes.view(1, heads, 1, 1), persistent=False)

    def embed(self, items):
        return self.item_emb(items) * math.sqrt(self.dim)

    def embed_window(self, seq):
        """The window's input vectors; with learned positions the last item is always position
        window - 1, as in SASRec's left-padded input (training batches are cut to their longest)."""
        x = self.embed(seq)
        if self.pos_emb is not None:
            t = seq.shape[1]
            x = x + self.pos_emb(torch.arange(self.window - t, self.window, device=seq.device))
        return x

    def attention_bias(self, seq, queries=None):
        """ALiBi over a sliding span: each position sees itself and the real items of the span before it.
        [B, H, queries, T]: the rows of the last `queries` positions (default all)."""
        t = seq.shape[1]
        q = queries or t
        i = torch.arange(t, device=seq.device)
        rows = i if queries is None else i[t - q:]        # no Slice in the graphs that take every row
        dist = (rows.view(-1, 1) - i.view(1, -1)).float()                    # query - key
        allowed = (dist >= 0) & (dist < self.span)
        key_real = (seq > 0).view(seq.shape[0], 1, 1, t)
        allowed = allowed.view(1, 1, q, t) & (key_real | (dist == 0).view(1, 1, q, t))
        return torch.where(allowed, -self.slopes * dist, torch.tensor(float("-inf"), device=seq.device))

    def encode(self, seq):
        """seq [B, T] left-padded -> hidden [B, T, D]."""
        bias = self.attention_bias(seq)
        x = self.drop(self.embed_window(seq))
        for block in self.blocks:
            x = block(x, bias)
        return self.norm(x)

    # --- state for the step graph ---
    # The first layer reads the item embeddings alone (ALiBi adds no position to them), so its keys
    # and values are a function of the item: the state keeps the ids of the cached positions and the
    # graphs look the first layer's keys and values up in a per-item table exported with them. That
    # halves a 2-layer model's state per user (the daemon's state cache holds twice the users). The
    # ids are kept as two base-2048 digits, which the daemon's f16 state holds exactly.
    ID_BASE = 2048

    def item_keys_values(self):
        """The first layer's keys and values of every item, [H, n_items + 1, dh] each."""
        assert self.exact_step, "with learned positions the first layer's input depends on the position"
        assert self.n_items + 1 <= self.ID_BASE ** 2, "item ids beyond two base-2048 digits"
        block = self.blocks[0]
        items = torch.arange(self.n_items + 1, device=self.slopes.device).unsqueeze(0)
        k, v = block.keys_values(block.ln1(self.embed(items)))
        return k[0], v[0]

    @classmethod
    def id_digits(cls, items):
        """items [...] -> [..., 2] float digits."""
        return torch.stack([torch.div(items, cls.ID_BASE, rounding_mode="floor"), items % cls.ID_BASE], -1).float()

    def first_layer_cache(self, digits, table, stacked=True):
        """The first layer's keys and values [B, H, T, dh] of the items whose digits [B, T, 2] are
        given; with `stacked` False, a list of [B, T, dh] per head (what `Block.step` reads without
        copying them into one tensor)."""
        ids = (digits[..., 0] * self.ID_BASE + digits[..., 1]).long()
        # Head by head: a gather followed by a transpose keeps ONNX Runtime from fusing the
        # attention's own transpose into its MatMul (a third of the step graph's time).
        heads = tuple([t[h][ids] for h in range(self.heads)] for t in table)
        return tuple(torch.stack(t, dim=1) for t in heads) if stacked else heads

    def prefill(self, seq, table=None):
        """seq [B, W] left-padded -> the step state after the window, in one pass: the ids of the last
        span - 1 items and each later layer's keys and values of those positions. The window covers
        every layer's receptive field (asserted in __init__), so this equals stepping the user's whole
        history item by item: the state is a function of the window and need not be stored.

        Only what the state needs is computed: layer l's keys and values over the last
        (layers - l) * (span - 1) positions (the first layer's from the per-item table), and its
        outputs (queries, attention, feed-forward) over the last (layers - l - 1) * (span - 1), which
        the next layer's keys read; the last layer's outputs not at all (the daemon calls this for
        every user whose state it had to drop). `table`: item_keys_values(), computed when absent."""
        s1, layers = self.span - 1, len(self.blocks)
        table = table or self.item_keys_values()
        seq = seq[:, -layers * s1:]
        x = self.embed(seq)
        ks, vs = [], []
        for i, block in enumerate(self.blocks):
            n = (layers - i - 1) * s1
            if i == 0:
                k, v = self.first_layer_cache(self.id_digits(seq), table)
                h = block.ln1(x[:, -n:]) if n else None
            else:
                h = block.ln1(x)
                k, v = block.keys_values(h)
                ks.append(k[:, :, -s1:])
                vs.append(v[:, :, -s1:])
            if n:
                x = block.last_outputs(x, h, k, v, self.attention_bias(seq[:, -x.shape[1]:], n), n)
        cached = seq[:, -s1:]
        kv = (torch.stack(ks), torch.stack(vs)) if ks else ()
        return (self.id_digits(cached), *kv, (cached > 0).float())

    def scores(self, hidden):
        return F.linear(hidden, output_embedding(self).weight)  # exports as one Gemm, no transposed copy

    def state_shapes(self, batch):
        s = (self.layers - 1, batch, self.heads, self.span - 1, self.dim // self.heads)
        later_layers = {"k_cache": s, "v_cache": s} if self.layers > 1 else {}
        return {"cache_items": (batch, self.span - 1, 2), **later_layers, "cache_mask": (batch, self.span - 1)}

    # The step graph returns only the newest entry of each sliding state along these axes; the
    # daemon drops the oldest and appends it (manifest `append_axis`). Returning the whole shifted
    # cache was a third of the step graph's time, all copies (docs/performance.md).
    append_axes = {"cache_items": 1, "k_cache": 3, "v_cache": 3, "cache_mask": 1}

    def step(self, item, *state, table=None):
        """item [B]; state as state_shapes: cache_items [B, S-1, 2] (digits of the cached items),
        k_cache, v_cache [L-1, B, H, S-1, dh] (the later layers'), cache_mask [B, S-1] (1 = filled,
        oldest first). Returns the hidden state and the newest entries: the item's digits [B, 1, 2],
        k, v [L-1, B, H, 1, dh] and mask [B, 1]. `table`: item_keys_values(), computed when absent."""
        table = table or self.item_keys_values()
        cache_items, cache_mask = state[0], state[-1]
        k_cache, v_cache = state[1:-1] if len(state) == 4 else (None, None)
        dist = torch.arange(self.span - 1, -1, -1, device=item.device).float()     # oldest .. newest
        filled = torch.ones_like(cache_mask[:, :1])
        mask = torch.cat([cache_mask, filled], dim=1).unsqueeze(1).unsqueeze(1)
        bias = torch.where(mask > 0, -self.slopes * dist.view(1, 1, 1, -1), torch.full_like(mask, float("-inf")))
        x = self.embed(item).unsqueeze(1)
        # With one later layer its caches are a squeeze away (a view); indexing them by layer exports
        # as a Gather, which copies them.
        if self.layers == 2:
            later_caches = [(k_cache.squeeze(0), v_cache.squeeze(0))]
        else:
            later_caches = list(zip(k_cache, v_cache)) if k_cache is not None else []
        new_k, new_v = [], []
        for l, block in enumerate(self.blocks):
            if l == 0:
                x, _, _ = block.step(x, *self.first_layer_cache(cache_items, table, stacked=False), bias)
            else:
                x, k, v = block.step(x, *later_caches[l - 1], bias)
                new_k.append(k)
                new_v.append(v)
        hidden = self.norm(x)[:, 0]
        kv = (torch.stack(new_k), torch.stack(new_v)) if new_k else ()
        return hidden, (self.id_digits(item).unsqueeze(1), *kv, filled)


    def chunk(self, items, keys, tails, *state, table=None):
        """Steps several items per user in one pass: a user's events that arrive in one micro-batch
        (a burst) cost one graph call instead of one call each. items [R]: every new item, each
        user's in order; state as in `step`, one row per user (B rows). The graph sees one pool of
        positions: the cached ones (row b's slot j at b * (S-1) + j), then the new items (item r at
        B * (S-1) + r). keys [R, S]: the positions item r attends to, oldest first, itself last (an
        empty cache slot among them is masked, as in `step`); tails [B, S-1]: each user's last S-1
        positions after its items, which become its state. Every layer takes all R items at once:
        an item's keys at layer l are the outputs of layer l - 1, computed for every item before.
        Returns the hidden state of every item [R, D] and the whole new state (a user without new
        items keeps its own: tails point at its cache)."""
        table = table or self.item_keys_values()
        cache_items, cache_mask = state[0], state[-1]
        k_cache, v_cache = state[1:-1] if len(state) == 4 else (None, None)
        b, s1 = cache_mask.shape
        cached_ids = (cache_items[..., 0] * self.ID_BASE + cache_items[..., 1]).long().reshape(b * s1)
        pool_ids = torch.cat([cached_ids, items])
        pool_mask = torch.cat([cache_mask.reshape(b * s1), torch.ones_like(items, dtype=cache_mask.dtype)])
        dist = torch.arange(self.span - 1, -1, -1, device=items.device).float()     # oldest .. newest
        mask = pool_mask[keys].unsqueeze(1).unsqueeze(1)                             # [R, 1, 1, S]
        bias = torch.where(mask > 0, -self.slopes * dist.view(1, 1, 1, -1), torch.full_like(mask, float("-inf")))
        x = self.embed(items).unsqueeze(1)                                           # [R, 1, D]
        d, heads = self.dim, self.heads
        new_k, new_v = [], []
        for l, block in enumerate(self.blocks):
            h = block.ln1(x)
            if l == 0:
                q = F.linear(h, block.qkv.weight[:d], block.qkv.bias[:d])
                ids = pool_ids[keys]                                                 # [R, S]
                k, v = (torch.stack([t[i][ids] for i in range(heads)], dim=1) for t in table)
            else:
                q, k_new, v_new = block.qkv(h).chunk(3, dim=-1)
                k, kept_k = self.pooled(k_cache[l - 1], k_new, keys, tails)
                v, kept_v = self.pooled(v_cache[l - 1], v_new, keys, tails)
                new_k.append(kept_k)
                new_v.append(kept_v)
            x = x + block.attend(block.split(q), k, v, bias)
            x = x + block.ff(block.ln2(x))
        hidden = self.norm(x)[:, 0]
        kv = (torch.stack(new_k), torch.stack(new_v)) if new_k else ()
        return hidden, (self.id_digits(pool_ids[tails]), *kv, pool_mask[tails])

    def pooled(self, cache, fresh, keys, tails):
        """One layer's keys (or values) for `chunk`: the cached positions [B, H, S-1, dh] and the new
        items' [R, 1, D] as one pool, gathered for each item's attention [R, H, S, dh] and for each
        user's new state [B, H, S-1, dh]."""
        b, heads, s1, dh = cache.shape
        pool = torch.cat([cache.transpose(1, 2).reshape(b * s1, heads, dh), fresh[:, 0].unflatten(-1, (heads, dh))])
        # head by head, as in first_layer_cache, so that the attention's MatMul keeps its fusion
        attended = torch.stack([pool[:, i][keys] for i in range(heads)], dim=1)
        return attended, pool[tails].transpose(1, 2)


class GRU4Rec(nn.Module):
    kind = "gru4rec"

    def __init__(self, n_items, window=50, dim=64, dropout=0.2, separate_output=False, **_):
        super().__init__()
        self.n_items, self.window, self.dim = n_items, window, dim
        self.item_emb = item_embedding(n_items, dim)
        self.out_emb = item_embedding(n_items, dim) if separate_output else None
        self.cell = nn.GRUCell(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def encode(self, seq):
        b, t = seq.shape
        h = torch.zeros(b, self.dim, device=seq.device)
        x = self.drop(self.item_emb(seq))
        out = []
        for i in range(t):
            real = (seq[:, i] > 0).float().unsqueeze(1)
            h = real * self.cell(x[:, i], h) + (1 - real) * h
            out.append(h)
        return self.norm(self.drop(torch.stack(out, dim=1)))

    def scores(self, hidden):
        return F.linear(hidden, output_embedding(self).weight)  # exports as one Gemm, no transposed copy

    def state_shapes(self, batch):
        return {"hidden": (batch, self.dim)}

    def step(self, item, hidden):
        h = self.cell(self.item_emb(item), hidden)
        return self.norm(h), (h,)


class MemoryRec(nn.Module):
    """The long-term-memory recommender: a short recent window read by sliding-window attention
    (exact key/value cache of `span - 1` items), plus `slots` per-user key-value memory slots that
    every event updates with a gated erase-and-add write (in the spirit of MIMN/NTM memories). The
    hidden state reads the slots by attention, so the whole history informs scoring while the state
    stays a few kilobytes."""
    kind = "memory"

    def __init__(self, n_items, window=50, dim=64, heads=2, span=8, slots=4, dropout=0.2, separate_output=False, **_):
        super().__init__()
        self.n_items, self.window, self.dim, self.heads, self.span, self.slots = n_items, window, dim, heads, span, slots
        self.item_emb = item_embedding(n_items, dim)
        self.out_emb = item_embedding(n_items, dim) if separate_output else None
        self.block = Block(dim, heads, dropout)
        self.write_key = nn.Linear(dim, dim)
        self.erase = nn.Linear(dim, dim)
        self.add = nn.Linear(dim, dim)
        self.read_query = nn.Linear(dim, dim)
        self.read_out = nn.Linear(dim, dim)
        self.slot_init = nn.Parameter(torch.randn(slots, dim) * 0.1)
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.register_buffer("slopes", alibi_slopes(heads).view(1, heads, 1, 1), persistent=False)

    def embed(self, items):
        return self.item_emb(items) * math.sqrt(self.dim)

    def write(self, memory, e, real):
        """memory [B, M, D] (offset from slot_init), e [B, D] the new item; real [B, 1] 0 for padding."""
        slots = memory + self.slot_init
        w = torch.softmax((slots @ self.write_key(e).unsqueeze(-1)).squeeze(-1) / math.sqrt(self.dim), dim=-1)  # [B, M]
        erase = torch.sigmoid(self.erase(e)).unsqueeze(1)                                                  # [B, 1, D]
        add = torch.tanh(self.add(e)).unsqueeze(1)
        w = (w * real).unsqueeze(-1)                                                                       # [B, M, 1]
        return memory * (1 - w * erase) + w * (add - self.slot_init * erase)

    def read(self, memory, h):
        slots = memory + self.slot_init
        att = torch.softmax((slots @ self.read_query(h).unsqueeze(-1)).squeeze(-1) / math.sqrt(self.dim), dim=-1)
        return self.read_out((att.unsqueeze(-1) * slots).sum(1))

    def encode(self, seq):
        b, t = seq.shape
        i = torch.arange(t, device=seq.device)
        dist = (i.view(-1, 1) - i.view(1, -1)).float()
        allowed = (dist >= 0) & (dist < self.span)
        key_real = (seq > 0).view(b, 1, 1, t)
        allowed = allowed.view(1, 1, t, t) & (key_real | (dist == 0).view(1, 1, t, t))
        bias = torch.where(allowed, -self.slopes * dist, torch.tensor(float("-inf"), device=seq.device))
        e = self.embed(seq)
        h = self.block(self.drop(e), bias)                                                                  # [B, T, D]
        memory = torch.zeros(b, self.slots, self.dim, device=seq.device)
        out = []
        for k in range(t):
            memory = self.write(memory, e[:, k], (seq[:, k:k + 1] > 0).float())
            out.append(h[:, k] + self.read(memory, h[:, k]))
        return self.norm(self.drop(torch.stack(out, dim=1)))

    def scores(self, hidden):
        return F.linear(hidden, output_embedding(self).weight)  # exports as one Gemm, no transposed copy

    def state_shapes(self, batch):
        s = (batch, self.heads, self.span - 1, self.dim // self.heads)
        return {"k_cache": s, "v_cache": s, "cache_mask": (batch, self.span - 1), "memory": (batch, self.slots, self.dim)}

    # As SASRec's: the window's cache comes back as its newest entry only; the slots come back whole.
    append_axes = {"k_cache": 2, "v_cache": 2, "cache_mask": 1}

    def step(self, item, k_cache, v_cache, cache_mask, memory):
        dist = torch.arange(self.span - 1, -1, -1, device=item.device).float()
        filled = torch.ones_like(cache_mask[:, :1])
        mask = torch.cat([cache_mask, filled], dim=1).unsqueeze(1).unsqueeze(1)
        bias = torch.where(mask > 0, -self.slopes * dist.view(1, 1, 1, -1), torch.full_like(mask, float("-inf")))
        e = self.embed(item)
        x, k, v = self.block.step(e.unsqueeze(1), k_cache, v_cache, bias)
        h = x[:, 0]
        memory = self.write(memory, e, filled)
        hidden = self.norm(h + self.read(memory, h))
        return hidden, (k, v, filled, memory)


RECOMMENDERS = {"sasrec": SASRec, "gru4rec": GRU4Rec, "memory": MemoryRec}
DEFAULT_SPAN = {"sasrec": 25, "memory": 8}


def build(args, n_items):
    """The recommender `train.py`'s arguments describe (a dict: its parsed flags, or a manifest's
    `training.args`), untrained."""
    span = args["span"] or DEFAULT_SPAN.get(args["model"], 1)
    return RECOMMENDERS[args["model"]](n_items, window=args["window"], dim=args["dim"], layers=args["layers"],
                                       heads=args["heads"], span=span, slots=args["slots"], dropout=args["dropout"],
                                       separate_output=args.get("separate_output", False),
                                       positions=args.get("positions", "alibi"))


class ItemTable(nn.Module):
    """A model's per-item first-layer keys and values (SASRec.item_keys_values), computed once at
    export and stored in the graph as constants; nothing for a model without them."""

    def __init__(self, model):
        super().__init__()
        self.present = hasattr(model, "item_keys_values") and getattr(model, "exact_step", False)
        if self.present:
            with torch.no_grad():
                k, v = model.item_keys_values()
            self.register_buffer("item_keys", k, persistent=False)
            self.register_buffer("item_values", v, persistent=False)

    def kwargs(self):
        return {"table": (self.item_keys, self.item_values)} if self.present else {}


class FullGraph(nn.Module):
    """item_seq [B, W] -> top_items, top_scores [B, candidates], scores [B, n_items + 1]."""

    def __init__(self, model, candidates):
        super().__init__()
        self.model, self.candidates = model, candidates

    def forward(self, item_seq):
        hidden = self.model.encode(item_seq)[:, -1]
        scores = self.model.scores(hidden)
        scores = torch.cat([torch.full_like(scores[:, :1], -1e9), scores[:, 1:]], dim=1)
        top_scores, top_items = torch.topk(scores, self.candidates, dim=1)
        return top_items, top_scores, scores


class PrefillGraph(nn.Module):
    """item_seq [B, W] -> the step graph's state after the window (models whose state is a function
    of the window: SASRec's key/value cache)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.table = ItemTable(model)

    def forward(self, item_seq):
        return self.model.prefill(item_seq, **self.table.kwargs())


def padding_bias(n_items):
    """A bias that holds the padding item's score (index 0) at -1e9, so it is never ranked."""
    bias = torch.zeros(n_items + 1)
    bias[0] = -1e9
    return bias


def scores_for_ranking(graph, hidden):
    """Every item's score, the padding item's at -1e9, in one Gemm: the bias does what cutting
    column 0 off and joining a constant to the rest did, which copied the scores twice (7% of
    sasrec-ml100k's step graph). For the graphs the daemon calls per event (step, chunk)."""
    return F.linear(hidden, output_embedding(graph.model).weight, graph.padding)


class ChunkGraph(nn.Module):
    """(items [R], keys [R, S], tails [B, S-1], *state) -> (scores [R, n_items + 1], *new_state):
    several items per user in one call (SASRec.chunk)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.table = ItemTable(model)
        self.register_buffer("padding", padding_bias(model.n_items), persistent=False)

    def forward(self, items, keys, tails, *state):
        hidden, new_state = self.model.chunk(items, keys, tails, *state, **self.table.kwargs())
        return (scores_for_ranking(self, hidden), *new_state)


class StepGraph(nn.Module):
    """(item [B], *state) -> (top_items, top_scores, scores, *new_state)."""

    def __init__(self, model, candidates):
        super().__init__()
        self.model, self.candidates = model, candidates
        self.table = ItemTable(model)
        self.register_buffer("padding", padding_bias(model.n_items), persistent=False)

    def forward(self, item, *state):
        hidden, new_state = self.model.step(item, *state, **self.table.kwargs())
        scores = scores_for_ranking(self, hidden)
        top_scores, top_items = torch.topk(scores, self.candidates, dim=1)
        return (top_items, top_scores, scores, *new_state)


def sampled_logits(model, batch, negatives, draw="batch"):
    """Each position's next-item logit, [B, W], and its logits against `negatives` items drawn
    uniformly from the catalogue, [B, W, N] (a draw equal to the position's own next item is masked
    to -inf), and the mask of positions with a next item. `draw` "batch" shares one draw across the
    batch; "sequence" draws for each training sequence, so the batch meets B times as many items
    (gSASRec draws for each position; per sequence keeps the multiply-adds of one shared draw)."""
    inp, pos = batch[:, :-1], batch[:, 1:]
    hidden = model.encode(inp)                                                   # [B, W, D]
    emb = output_embedding(model)
    pos_logit = (hidden * emb(pos)).sum(-1)                                      # [B, W]
    draws = batch.shape[0] if draw == "sequence" else 1
    neg = torch.randint(1, model.n_items + 1, (draws, negatives), device=batch.device)   # [B or 1, N]
    if draw == "sequence":
        neg_logit = torch.bmm(hidden, emb(neg).transpose(1, 2))                  # [B, W, N]
    else:
        neg_logit = hidden @ emb(neg[0]).T                                       # [B, W, N]
    neg_logit = neg_logit.masked_fill(neg.unsqueeze(1) == pos.unsqueeze(-1), float("-inf"))
    return pos_logit, neg_logit, pos > 0


def sampled_softmax_loss(model, batch, negatives, draw="batch"):
    """Summed cross-entropy of each next item against `negatives` uniformly sampled items, or against
    the whole catalogue when `negatives` is 0 (slower per step; known to rank better under full
    ranking), and the number of predictions summed. The caller divides by a constant, not by this
    count: batches of short sequences must not weigh as much as batches of long ones."""
    if negatives <= 0:
        inp, pos = batch[:, :-1], batch[:, 1:]
        hidden = model.encode(inp)                                               # [B, W, D]
        real = pos > 0
        logits = F.linear(hidden[real], output_embedding(model).weight[1:])     # [R, n_items]
        return F.cross_entropy(logits, pos[real] - 1, reduction="sum"), int(real.sum())
    pos_logit, neg_logit, real = sampled_logits(model, batch, negatives, draw)
    logits = torch.cat([pos_logit.unsqueeze(-1), neg_logit], dim=-1)
    loss = F.cross_entropy(logits.reshape(-1, 1 + negatives), torch.zeros(logits.shape[0] * logits.shape[1], dtype=torch.long, device=batch.device), reduction="none")
    return (loss * real.reshape(-1).float()).sum(), int(real.sum())


def gbce_beta(negatives, n_items, t):
    """gSASRec's β: with α = negatives / (n_items − 1) the share of the catalogue's other items each
    positive is compared with, β = α(t(1 − 1/α) + 1/α) = 1 − t(1 − α). t = 0 is plain binary
    cross-entropy (β = 1); t = 1 corrects fully for the sampling (β = α)."""
    alpha = min(1.0, negatives / max(1, n_items - 1))
    return alpha * (t * (1 - 1 / alpha) + 1 / alpha)


def gbce_loss(model, batch, negatives, t, draw="batch"):
    """Summed generalised binary cross-entropy (Petrov & Macdonald, gSASRec, RecSys 2023) of each next
    item against `negatives` uniformly sampled items, and the number of predictions summed:
    −β·log σ(s⁺) − Σ log(1 − σ(s⁻)). Raising the positive's probability to the power β undoes the
    overconfidence that negative sampling teaches plain BCE, at the cost of sampled BCE."""
    if negatives <= 0:
        raise ValueError("gBCE compares with sampled negatives: give --negatives > 0")
    pos_logit, neg_logit, real = sampled_logits(model, batch, negatives, draw)
    beta = gbce_beta(negatives, model.n_items, t)
    # log(1 − σ(s)) = logσ(−s); a masked negative (−inf) adds 0.
    per_position = -beta * F.logsigmoid(pos_logit) - F.logsigmoid(-neg_logit).sum(-1)
    return (per_position * real.float()).sum(), int(real.sum())


def training_loss(model, batch, args):
    """The objective `--loss` chose: sampled (or, with --negatives 0, full) softmax, or gBCE."""
    if args.loss == "gbce":
        return gbce_loss(model, batch, args.negatives, args.gbce_t, args.negative_draw)
    return sampled_softmax_loss(model, batch, args.negatives, args.negative_draw)
