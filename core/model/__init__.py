"""The pure model: events, the lifecycle, the projection fold, the planner, errors."""
