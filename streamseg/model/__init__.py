"""SAM 2 model: registry, weights, building, the streaming tracker."""
