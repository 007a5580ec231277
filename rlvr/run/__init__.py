"""A run's set-up and life: building every part from the recipe (`build`), what plug-ins may ask of
the running trainer (`services`), signals, locks and atomic writes (`lifecycle`), alarms, and the
rules for resuming with a changed recipe (`resume_policy`)."""
