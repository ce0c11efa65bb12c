"""The recommender service: item statistics fed by the pipeline, and the strategies that rank items."""
