"""Graded assignments, one module per chapter: the functions made stubs, the questions and hidden tests.

Each module defines `CHAPTER` (the notebook's stem), `LIBRARY` (the module the chapter exports), `STUBS`
(the functions whose bodies the student writes), `QUESTIONS` (id, points, hidden test name, what it checks)
and one `hidden_*` function per question taking the student's namespace. The grader runs the module's source
in the student's kernel, then calls each question's test: no error is full points, an error or time-out zero.
"""
