"""The one shipped recipe: the sequential prune loop every method and candidate goes through,
candidates and their records, and the held-out comparison with the baselines. May import every
package below the search (methods, refit, evaluation, data, model, config, core)."""
