from fracture.cli import main

raise SystemExit(main())
