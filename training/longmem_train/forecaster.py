"""The demand forecaster: an LSTM over one SKU x location's daily demand that predicts, after every
day, the expected demand of each of the next `horizon` days and quantiles of the cumulative demand
over the next 1..horizon days (what a stockout check needs: P(demand before the next delivery >
stock on hand)).

Inputs per day are the raw demand and the day of the week (0 = Monday; -1 marks left padding, which
leaves the state untouched). Demand is scaled inside the graph by the series' running mean, which is
part of the state, so the daemon feeds raw units and one SKU that sells thousands a day and one that
sells three share the model. The quantiles are calibrated on held-out days after training. The state
is the LSTM's (h, c), the running sum and day count, and the weekly profile (each weekday's last and
average demand): a few hundred bytes per SKU x location.
"""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


class DemandLSTM(nn.Module):
    def __init__(self, horizon=28, hidden=48, quantiles=QUANTILES, dropout=0.1):
        super().__init__()
        self.horizon, self.hidden, self.quantiles = horizon, hidden, tuple(quantiles)
        self.cell = nn.LSTMCell(9, hidden)
        self.drop = nn.Dropout(dropout)
        features = hidden + 14
        self.mean_head = nn.Linear(features, horizon)
        # Quantiles of the cumulative demand, built from non-negative increments so that they never
        # cross: along the horizon (more days, more demand) and across quantile levels.
        self.quantile_head = nn.Linear(features, horizon * len(quantiles))
        # Per-level stretch of each quantile's distance from the median, set after training on held-out
        # days (see `calibrate`): pinball loss on the training days leaves the intervals too narrow.
        self.register_buffer("spread", torch.ones(len(quantiles)))

    def state_shapes(self, batch):
        return {"h": (batch, self.hidden), "c": (batch, self.hidden), "demand_sum": (batch, 1), "days": (batch, 1),
                "week_last": (batch, 7), "week_avg": (batch, 7), "last_day": (batch, 1)}

    def step(self, demand, day_of_week, h, c, demand_sum, days, week_last, week_avg, last_day):
        """demand [B] float, day_of_week [B] int64 (-1 = padding) -> the new state.

        Besides the LSTM, the state keeps each weekday's last demand and a running average of it
        (the weekly profile that makes seasonal-naive forecasts strong on retail data), so the
        heads read it directly instead of the LSTM having to memorise a week."""
        real = (day_of_week >= 0).float().unsqueeze(1)
        demand = demand.clamp(min=0.0).unsqueeze(1) * real
        new_sum, new_days = demand_sum + demand, days + real
        scale = (new_sum / new_days.clamp(min=1.0)).clamp(min=1.0)
        z = demand / scale
        dow = F.one_hot(day_of_week.clamp(min=0), 7).float()
        x = torch.cat([z, torch.log1p(z), dow], dim=1)
        h2, c2 = self.cell(x, (h, c))
        h2, c2 = real * h2 + (1 - real) * h, real * c2 + (1 - real) * c
        today = dow * real
        first = (new_days <= 7).float()                      # the first week sets the average
        week_last = today * demand + (1 - today) * week_last
        avg = first * demand + (1 - first) * (0.5 * demand + 0.5 * week_avg)
        week_avg = today * avg + (1 - today) * week_avg
        last_day = real * day_of_week.unsqueeze(1).float() + (1 - real) * last_day
        return h2, c2, new_sum, new_days, week_last, week_avg, last_day

    def heads(self, h, demand_sum, days, week_last, week_avg, last_day):
        """Unscaled outputs: mean [B, horizon] and cumulative quantiles [B, horizon, Q]."""
        scale = (demand_sum / days.clamp(min=1.0)).clamp(min=1.0)
        # The weekly profile rotated so that position k is the weekday of the k-th next day.
        order = (last_day.long() + 1 + torch.arange(7, device=h.device).view(1, 7)) % 7
        profile = torch.cat([week_last.gather(1, order), week_avg.gather(1, order)], dim=1) / scale
        x = torch.cat([self.drop(h), profile], dim=1)
        mean = F.softplus(self.mean_head(x)) * scale
        inc = F.softplus(self.quantile_head(x)).view(-1, self.horizon, len(self.quantiles))
        inc_h = torch.cumsum(inc, dim=1)                         # growing with the horizon
        quantiles = torch.cumsum(inc_h, dim=2)                  # growing across levels
        median = quantiles[:, :, len(self.quantiles) // 2:len(self.quantiles) // 2 + 1]
        quantiles = (median + (quantiles - median) * self.spread).clamp(min=0.0)
        # Stretching levels by different factors can cross them; keep them in order across levels
        # and along the horizon.
        levels = [quantiles[:, :, 0]]
        for j in range(1, len(self.quantiles)):
            levels.append(torch.maximum(quantiles[:, :, j], levels[-1]))
        quantiles = torch.stack(levels, dim=2)
        days = [quantiles[:, 0]]
        for d in range(1, self.horizon):
            days.append(torch.maximum(quantiles[:, d], days[-1]))
        quantiles = torch.stack(days, dim=1)
        return mean, quantiles * scale.unsqueeze(-1)

    def initial_state(self, batch, like):
        return [like.new_zeros(s) for s in self.state_shapes(batch).values()]

    def run(self, demand, day_of_week):
        """demand, day_of_week [B, T] -> the state after every day: list of [B, T, ...] tensors."""
        state = self.initial_state(demand.shape[0], demand)
        states = []
        for i in range(demand.shape[1]):
            state = self.step(demand[:, i], day_of_week[:, i], *state)
            states.append(state)
        return [torch.stack(parts, 1) for parts in zip(*states)]


class ForecastFullGraph(nn.Module):
    """demand [B, T], day_of_week [B, T] -> mean [B, horizon], quantiles [B, horizon, Q] after the last day."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, demand, day_of_week):
        last = [s[:, -1] for s in self.model.run(demand, day_of_week)]
        return self.model.heads(last[0], *last[2:])


class ForecastStepGraph(nn.Module):
    """(demand [B], day_of_week [B], *state) -> (mean, quantiles, *new state)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, demand, day_of_week, *state):
        state = self.model.step(demand, day_of_week, *state)
        mean, quantiles = self.model.heads(state[0], *state[2:])
        return (mean, quantiles, *state)


def calibrate(quantile_levels, predicted, actual, grid=None):
    """Spread factors that make each quantile level's empirical coverage on held-out days match the
    level: for level tau, the smallest stretch of its distance from the median for which the share of
    actual cumulative demands below it is closest to tau. predicted [N, horizon, Q], actual
    [N, horizon] (cumulative). The median keeps factor 1."""
    grid = np.linspace(0.5, 6.0, 111) if grid is None else grid
    mid = len(quantile_levels) // 2
    median = predicted[:, :, mid]
    factors = []
    for j, tau in enumerate(quantile_levels):
        if j == mid:
            factors.append(1.0)
            continue
        dist = predicted[:, :, j] - median
        share = [np.mean(actual <= np.maximum(median + f * dist, 0.0)) for f in grid]
        factors.append(float(grid[int(np.argmin(np.abs(np.array(share) - tau)))]))
    return factors


def forecast_loss(model, states, demand, observed, targets_end, series_scale):
    """Loss over every observed forecast origin t whose whole horizon lies before `targets_end`:
    squared error of the daily means and pinball loss of the cumulative quantiles, both in units of
    `series_scale` [B, 1] (the series' mean daily demand, so big and small series weigh alike; the
    running scale the model sees is too noisy early in a series to divide a loss by), the
    cumulative terms divided by their number of days."""
    horizon, q = model.horizon, torch.tensor(model.quantiles)
    origins = torch.arange(0, targets_end - horizon)
    if len(origins) == 0:
        raise ValueError("the training history is shorter than the horizon")
    weight = observed[:, origins].reshape(-1, 1).float()                        # [B*O, 1]
    at = [s[:, origins].reshape(-1, s.shape[-1]) for s in states]
    mean, quantiles = model.heads(at[0], *at[2:])
    idx = origins.view(-1, 1) + 1 + torch.arange(horizon).view(1, -1)          # [O, horizon]
    future = demand[:, idx].reshape(-1, horizon)                                # [B*O, horizon]
    scale = series_scale.repeat_interleave(len(origins), dim=0)                 # [B*O, 1]
    mse = (((mean - future) / scale) ** 2 * weight).sum() / (weight.sum() * horizon)
    cum = torch.cumsum(future, dim=1).unsqueeze(-1)
    err = (cum - quantiles) / scale.unsqueeze(-1)
    pinball = torch.maximum(q * err, (q - 1) * err) / torch.arange(1, horizon + 1).view(1, -1, 1)
    pinball = (pinball * weight.unsqueeze(-1)).sum() / (weight.sum() * horizon * len(model.quantiles))
    return mse + 2 * pinball
