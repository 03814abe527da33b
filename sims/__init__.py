"""sims: studies of SCL with prototypes built on ncgeo (many-prototype limit, geometry engineering,
batching, temperature, inverse design). Each study writes a table, a figure and a verdict."""
