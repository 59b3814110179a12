"""Admission: who may send a submission, what each recipient's checks say, where it waits."""
