"""The recommended precision: equal-budget curves and the Pareto frontier."""
